// Command render_template renders an Ollama TEMPLATE the way Ollama does for a chat.
//
// It reads {"template": "...", "messages": [...], "tools": [...], "system": "..."} from
// standard input and writes the rendered text to standard output, exactly (no newline added).
// With "conversations": [{"messages", "tools", "system"}, ...] instead it writes a JSON list
// of the texts; with "tag": true, the tag Ollama looks for in a reply to find tool calls.
// Messages and tools are decoded as Ollama's API decodes a /api/chat request (github.com/
// ollama/ollama, api/types.go: Message, ToolCall, Tool, ToolProperty): fields Ollama does
// not know are dropped, one property type becomes a list of one. Then, as Ollama's
// template.Execute does: consecutive messages of one role other than tool are merged
// (collate), every system content joined by a blank line is .System unless "system" is
// given, and the template sees .System, .Messages, .Tools (nil without tools), .Response,
// .Think, .ThinkLevel and .IsThinkSet, with missingkey=zero, Ollama's `json` function, tool
// call arguments and top-level tool properties as plain maps (Ollama's templateArgs and
// templateProperties). Standard library only, so it builds offline.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
)

// PropertyType is one JSON Schema type or several, as Ollama's api.PropertyType.
type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*pt = []string{s}
		return nil
	}
	var a []string
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	*pt = a
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

// ToolPropertiesMap is Ollama's ordered map of properties; a template reaches it only
// through ToMap (a plain map), so the order is not kept here.
type ToolPropertiesMap struct {
	m map[string]ToolProperty
}

func (t *ToolPropertiesMap) UnmarshalJSON(data []byte) error {
	return json.Unmarshal(data, &t.m)
}

func (t ToolPropertiesMap) MarshalJSON() ([]byte, error) {
	return json.Marshal(t.m)
}

func (t *ToolPropertiesMap) ToMap() map[string]ToolProperty {
	if t == nil {
		return nil
	}
	return t.m
}

func (t *ToolPropertiesMap) Len() int {
	if t == nil {
		return 0
	}
	return len(t.m)
}

type ToolProperty struct {
	AnyOf       []ToolProperty     `json:"anyOf,omitempty"`
	Type        PropertyType       `json:"type,omitempty"`
	Items       any                `json:"items,omitempty"`
	Description string             `json:"description,omitempty"`
	Enum        []any              `json:"enum,omitempty"`
	Properties  *ToolPropertiesMap `json:"properties,omitempty"`
	Required    []string           `json:"required,omitempty"`
}

type toolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties *ToolPropertiesMap `json:"properties"`
}

type toolFunction struct {
	Name        string                 `json:"name"`
	Description string                 `json:"description,omitempty"`
	Parameters  toolFunctionParameters `json:"parameters"`
}

type tool struct {
	Type     string       `json:"type"`
	Items    any          `json:"items,omitempty"`
	Function toolFunction `json:"function"`
}

type toolCall struct {
	ID       string `json:"id,omitempty"`
	Function struct {
		Index     int            `json:"index"`
		Name      string         `json:"name"`
		Arguments map[string]any `json:"arguments"`
	} `json:"function"`
}

type message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking,omitempty"`
	ToolCalls  []toolCall `json:"tool_calls,omitempty"`
	ToolName   string     `json:"tool_name,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

// What a template sees (Ollama's template/template.go: templateTool, templateMessage, ...).

type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateProperties map[string]ToolProperty

func (t templateProperties) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties templateProperties `json:"properties"`
}

type templateToolFunction struct {
	Name        string                         `json:"name"`
	Description string                         `json:"description"`
	Parameters  templateToolFunctionParameters `json:"parameters"`
}

type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

func (t templateTool) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type templateTools []templateTool

func (t templateTools) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type templateToolCallFunction struct {
	Index     int
	Name      string
	Arguments templateArgs
}

type templateToolCall struct {
	ID       string
	Function templateToolCallFunction
}

type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     []string
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

type conversation struct {
	Messages []message `json:"messages"`
	Tools    []tool    `json:"tools"`
	System   *string   `json:"system"`
}

type request struct {
	Template      string          `json:"template"`
	Conversations []*conversation `json:"conversations"`
	Tag           bool            `json:"tag"`
	conversation
}

// collate merges consecutive messages of one role (not tool ones) and joins system contents.
func collate(msgs []message) (string, []*message) {
	var system []string
	var collated []*message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func forTemplate(messages []*message) []*templateMessage {
	out := make([]*templateMessage, len(messages))
	for i, m := range messages {
		var calls []templateToolCall
		for _, c := range m.ToolCalls {
			calls = append(calls, templateToolCall{
				ID: c.ID,
				Function: templateToolCallFunction{
					Index:     c.Function.Index,
					Name:      c.Function.Name,
					Arguments: templateArgs(c.Function.Arguments),
				},
			})
		}
		out[i] = &templateMessage{
			Role:       m.Role,
			Content:    m.Content,
			Thinking:   m.Thinking,
			ToolCalls:  calls,
			ToolName:   m.ToolName,
			ToolCallID: m.ToolCallID,
		}
	}
	return out
}

func toolsForTemplate(tools []tool) templateTools {
	if tools == nil {
		return nil
	}
	out := make(templateTools, len(tools))
	for i, t := range tools {
		out[i] = templateTool{
			Type:  t.Type,
			Items: t.Items,
			Function: templateToolFunction{
				Name:        t.Function.Name,
				Description: t.Function.Description,
				Parameters: templateToolFunctionParameters{
					Type:       t.Function.Parameters.Type,
					Defs:       t.Function.Parameters.Defs,
					Items:      t.Function.Parameters.Items,
					Required:   t.Function.Parameters.Required,
					Properties: templateProperties(t.Function.Parameters.Properties.ToMap()),
				},
			},
		}
	}
	return out
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

// render is Ollama's template.Execute for a chat request.
func render(tmpl *template.Template, c *conversation) (string, error) {
	for i := range c.Messages {
		c.Messages[i].Role = strings.ToLower(c.Messages[i].Role)
	}
	system, messages := collate(c.Messages)
	if c.System != nil {
		system = *c.System
	}
	values := map[string]any{
		"System":     system,
		"Messages":   forTemplate(messages),
		"Tools":      toolsForTemplate(c.Tools),
		"Response":   "",
		"Think":      false,
		"ThinkLevel": "",
		"IsThinkSet": false,
	}
	var out bytes.Buffer
	err := tmpl.Execute(&out, values)
	return out.String(), err
}

// toolCallTag is the text Ollama's reply parser looks for to find tool calls: the first text
// that is not blank inside the first {{ if }} on .ToolCalls (searching into nested ifs, ranges
// and withs, never past an action), up to a "{" and trimmed; "{" when there is none.
func toolCallTag(tmpl *template.Template) string {
	node := findToolCallsIf(tmpl.Tree.Root.Nodes)
	if node == nil {
		return "{"
	}
	text := firstText(node.List.Nodes)
	if text == nil {
		return "{"
	}
	tag, _, _ := strings.Cut(string(text.Text), "{")
	if tag = strings.TrimSpace(tag); tag == "" {
		return "{"
	}
	return tag
}

func findToolCallsIf(nodes []parse.Node) *parse.IfNode {
	for _, node := range nodes {
		var lists []*parse.ListNode
		switch n := node.(type) {
		case *parse.IfNode:
			for _, cmd := range n.Pipe.Cmds {
				for _, arg := range cmd.Args {
					if field, ok := arg.(*parse.FieldNode); ok {
						for _, ident := range field.Ident {
							if ident == "ToolCalls" {
								return n
							}
						}
					}
				}
			}
			lists = []*parse.ListNode{n.List, n.ElseList}
		case *parse.RangeNode:
			lists = []*parse.ListNode{n.List, n.ElseList}
		case *parse.WithNode:
			lists = []*parse.ListNode{n.List, n.ElseList}
		case *parse.ListNode:
			lists = []*parse.ListNode{n}
		}
		for _, list := range lists {
			if list != nil {
				if found := findToolCallsIf(list.Nodes); found != nil {
					return found
				}
			}
		}
	}
	return nil
}

func firstText(nodes []parse.Node) *parse.TextNode {
	for _, node := range nodes {
		var lists []*parse.ListNode
		switch n := node.(type) {
		case *parse.TextNode:
			if len(bytes.TrimSpace(n.Text)) > 0 {
				return n
			}
			continue
		case *parse.ActionNode:
			return nil
		case *parse.ListNode:
			if text := firstText(n.Nodes); text != nil {
				return text
			}
			continue
		case *parse.IfNode:
			lists = []*parse.ListNode{n.List, n.ElseList}
		case *parse.RangeNode:
			lists = []*parse.ListNode{n.List, n.ElseList}
		case *parse.WithNode:
			lists = []*parse.ListNode{n.List, n.ElseList}
		default:
			continue
		}
		for _, list := range lists {
			if list != nil {
				if text := firstText(list.Nodes); text != nil {
					return text
				}
			}
		}
		return nil
	}
	return nil
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "render_template: bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "render_template: parse:", err)
		os.Exit(1)
	}
	if req.Tag {
		fmt.Print(toolCallTag(tmpl))
		return
	}
	if req.Conversations == nil {
		text, err := render(tmpl, &req.conversation)
		if err != nil {
			fmt.Fprintln(os.Stderr, "render_template: execute:", err)
			os.Exit(1)
		}
		fmt.Print(text)
		return
	}
	texts := make([]string, len(req.Conversations))
	for i, c := range req.Conversations {
		if texts[i], err = render(tmpl, c); err != nil {
			fmt.Fprintf(os.Stderr, "render_template: execute conversation %d: %v\n", i+1, err)
			os.Exit(1)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(texts); err != nil {
		fmt.Fprintln(os.Stderr, "render_template: write:", err)
		os.Exit(1)
	}
}
