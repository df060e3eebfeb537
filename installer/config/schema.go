package config

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
)

// SchemaID is the $id of the answer file's JSON Schema.
const SchemaID = "https://airlock.dev/schemas/v1alpha1/install.json"

// Formats of scalar fields, as patterns the schema enforces. They are
// deliberately loose: the validator gives the precise messages, the schema
// lets editors complete and flag obvious slips.
var formatSchemas = map[string]map[string]any{
	"ip":       {"type": "string", "pattern": `^[0-9A-Fa-f:.]+$`},
	"cidr":     {"type": "string", "pattern": `^[0-9A-Fa-f:.]+/[0-9]{1,3}$`},
	"mac":      {"type": "string", "pattern": `^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$`},
	"quantity": {"type": "string", "pattern": `^[0-9]+(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?$`},
	"duration": {"type": "string", "pattern": `^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`},
}

// Schema returns the JSON Schema (draft 2020-12) of the answer file, made
// from the same struct and tags that decoding and validation use.
func Schema() ([]byte, error) {
	s := schemaFor(reflect.TypeFor[Answers](), "")
	s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	s["$id"] = SchemaID
	s["title"] = "airlock answer file"
	return json.MarshalIndent(s, "", "  ")
}

func schemaFor(t reflect.Type, format string) map[string]any {
	if f, ok := formatSchemas[format]; ok && t.Kind() != reflect.Slice {
		out := map[string]any{}
		for k, v := range f {
			out[k] = v
		}
		return out
	}
	switch t.Kind() {
	case reflect.Pointer:
		return schemaFor(t.Elem(), format)
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return map[string]any{"type": "integer"}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer", "minimum": 0}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice:
		return map[string]any{"type": "array", "items": schemaFor(t.Elem(), format)}
	case reflect.Map:
		if t.Elem().Kind() == reflect.Interface {
			return map[string]any{"type": "object"}
		}
		return map[string]any{"type": "object", "additionalProperties": schemaFor(t.Elem(), format)}
	case reflect.Interface:
		return map[string]any{}
	case reflect.Struct:
		props := map[string]any{}
		var required []string
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			p := schemaFor(f.Type, f.Tag.Get("format"))
			if doc := f.Tag.Get("doc"); doc != "" {
				p["description"] = doc
			}
			if enum := f.Tag.Get("enum"); enum != "" {
				p["enum"] = strings.Split(enum, ",")
			}
			if pattern := f.Tag.Get("pattern"); pattern != "" {
				p["pattern"] = pattern
			}
			if minimum := f.Tag.Get("minimum"); minimum != "" {
				n, _ := strconv.Atoi(minimum)
				p["minimum"] = n
			}
			props[name] = p
			if f.Tag.Get("required") == "true" {
				required = append(required, name)
			}
		}
		out := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
		if len(required) > 0 {
			out["required"] = required
		}
		return out
	}
	return map[string]any{}
}
