// Command render_template renders an Ollama TEMPLATE the way Ollama does for a chat.
//
// It reads {"template": "...", "messages": [{"role": "...", "content": "..."}], "system": "..."}
// from standard input and writes the rendered text to standard output, exactly (no newline
// added). Like Ollama, the template sees .System (all system contents joined by a blank line
// when "system" is absent), .Messages, .Prompt and .Response, with missingkey=zero.
// Standard library only, so it builds offline.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type request struct {
	Template string    `json:"template"`
	Messages []message `json:"messages"`
	System   *string   `json:"system"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "render_template: bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "render_template: parse:", err)
		os.Exit(1)
	}
	system := ""
	if req.System != nil {
		system = *req.System
	} else {
		var parts []string
		for _, m := range req.Messages {
			if m.Role == "system" {
				parts = append(parts, m.Content)
			}
		}
		system = strings.Join(parts, "\n\n")
	}
	messages := make([]*message, len(req.Messages))
	for i := range req.Messages {
		messages[i] = &req.Messages[i]
	}
	values := map[string]any{
		"System":   system,
		"Messages": messages,
		"Prompt":   "",
		"Response": "",
	}
	if err := tmpl.Execute(os.Stdout, values); err != nil {
		fmt.Fprintln(os.Stderr, "render_template: execute:", err)
		os.Exit(1)
	}
}
