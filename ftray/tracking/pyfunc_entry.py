"""The code MLflow runs to build an ftray registered model (MLflow "models from code").

Logged with every registered version and executed when the version is loaded or served:
it builds the `AdapterModel`, whose `load_context` loads the base and the adapter.
"""

from mlflow.models import set_model

from ftray.tracking.pyfunc import AdapterModel

set_model(AdapterModel())
