"""One trial as plain functions (no Ray, no MLflow): load the base through a backend, train
LoRA with TRL epoch by epoch, and measure what the adapter does after every epoch."""
