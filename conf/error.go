package conf

import (
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Problem is one thing wrong with a configuration. File, Line and Col are
// zero when the problem was found in a Config built in code rather than read
// from a file.
type Problem struct {
	File      string
	Line, Col int
	Msg       string
}

// String renders the problem as "FILE:LINE:COL: message", the form editors
// and compilers use, so a terminal can jump to it.
func (p Problem) String() string {
	switch {
	case p.File == "" && p.Line == 0:
		return p.Msg
	case p.Line == 0:
		return p.File + ": " + p.Msg
	default:
		return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Col, p.Msg)
	}
}

// Error is every problem found in a configuration, reported together so
// that one edit-and-retry cycle fixes them all.
type Error struct {
	Problems []Problem
}

func (e *Error) Error() string {
	if len(e.Problems) == 0 {
		return "conf: invalid configuration"
	}
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// problemAt builds a Problem located at the start of r.
func problemAt(r hcl.Range, msg string) Problem {
	return Problem{File: r.Filename, Line: r.Start.Line, Col: r.Start.Column, Msg: msg}
}

// diagProblems turns the errors among diags into problems. Warnings are
// dropped: HCL emits none for the constructs this package accepts.
func diagProblems(diags hcl.Diagnostics) []Problem {
	var out []Problem
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += ": " + d.Detail
		}
		var p Problem
		switch {
		case d.Subject != nil:
			p = problemAt(*d.Subject, msg)
		case d.Context != nil:
			p = problemAt(*d.Context, msg)
		default:
			p = Problem{Msg: msg}
		}
		out = append(out, p)
	}
	return out
}

// sortProblems orders problems by position so the report reads top to
// bottom like the file. The sort is stable: problems at the same place keep
// the order in which they were found.
func sortProblems(ps []Problem) {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
}
