package main

import (
	"fmt"
	"io"
	"reflect"
	"strings"
	"unicode"
)

// writeStats renders the integer fields of a stats struct as Prometheus
// gauges named prefix + snake_case(field), so new counters in rules.Stats or
// stream.Stats appear without touching this file.
func writeStats(w io.Writer, prefix string, stats any) {
	v := reflect.ValueOf(stats)
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return
	}
	t := v.Type()
	for i := range t.NumField() {
		f := v.Field(i)
		var n string
		switch f.Kind() {
		case reflect.Int, reflect.Int32, reflect.Int64:
			n = fmt.Sprint(f.Int())
		case reflect.Uint, reflect.Uint32, reflect.Uint64:
			n = fmt.Sprint(f.Uint())
		default:
			continue
		}
		name := prefix + snake(t.Field(i).Name)
		fmt.Fprintf(w, "# TYPE %s gauge\n%s %s\n", name, name, n)
	}
}

func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}
