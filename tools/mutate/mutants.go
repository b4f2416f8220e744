package main

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"strings"
)

// A mutant is one small change to one file of a package: the kind of
// change, where, and the code before and after, as printed Go.
type mutant struct {
	File     string // absolute path
	Line     int
	Col      int    // of the changed node's start: which coverage block holds it
	Func     string // the enclosing function, "Recv.Name" for methods
	Kind     string
	Original string
	Mutated  string
	index    int // the index-th site of this kind... in walk order of the file
	schema   schemaSite
}

// Kinds of change, named as in the report and the equivalents file.
const (
	kindComparison = "comparison"   // == and != swapped; < and <=, > and >= swapped (boundaries)
	kindLogical    = "logical"      // && and || swapped
	kindReturnNil  = "return-nil"   // a returned err made nil
	kindCall       = "call-deleted" // a call statement deleted
	kindBool       = "bool"         // true and false swapped
	kindOffByOne   = "plus-minus-1" // x+1 and x-1 made x
	kindNot        = "not-dropped"  // !x made x
)

var comparisonSwap = map[token.Token]token.Token{
	token.EQL: token.NEQ, token.NEQ: token.EQL,
	token.LSS: token.LEQ, token.LEQ: token.LSS,
	token.GTR: token.GEQ, token.GEQ: token.GTR,
}

// site is a place a mutation applies: apply changes the node in place (on
// a fresh parse of the file) and returns the code before and after.
type site struct {
	kind   string
	line   int
	col    int
	fn     string
	apply  func() (before, after string)
	schema schemaSite
}

// sites walks a parsed file and lists every mutation site in a stable
// order. The closures change the very AST they were collected from, so a
// caller parses the file anew for each mutant.
func sites(fset *token.FileSet, file *ast.File) []site {
	var out []site
	for _, decl := range file.Decls {
		fd, ok := decl.(*ast.FuncDecl)
		if !ok || fd.Body == nil {
			continue
		}
		name := funcName(fd)
		off := func(p token.Pos) int { return fset.Position(p).Offset }
		consts := constRanges(fd.Body, off)
		add := func(kind string, n ast.Node, apply func() (string, string), sch schemaSite) {
			at := fset.Position(n.Pos())
			sch.kind = kind
			for _, c := range consts {
				if c[0] <= sch.start && sch.end <= c[1] {
					sch.unwrappable = true // a constant cannot hold a run-time switch
				}
			}
			out = append(out, site{kind: kind, line: at.Line, col: at.Column, fn: name, apply: apply, schema: sch})
		}
		ast.Inspect(fd.Body, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.BinaryExpr:
				opSite := func(to token.Token) schemaSite {
					return schemaSite{start: off(n.Pos()), end: off(n.End()), opStart: off(n.OpPos),
						opEnd: off(n.OpPos) + len(n.Op.String()), newOp: to.String()}
				}
				if to, ok := comparisonSwap[n.Op]; ok {
					add(kindComparison, n, func() (string, string) {
						before := render(fset, n)
						n.Op = to
						return before, render(fset, n)
					}, opSite(to))
				}
				if n.Op == token.LAND || n.Op == token.LOR {
					to := map[token.Token]token.Token{token.LAND: token.LOR, token.LOR: token.LAND}[n.Op]
					add(kindLogical, n, func() (string, string) {
						before := render(fset, n)
						n.Op = to
						return before, render(fset, n)
					}, opSite(to))
				}
				if (n.Op == token.ADD || n.Op == token.SUB) && isOne(n.Y) {
					add(kindOffByOne, n, func() (string, string) {
						before := render(fset, n)
						replaceExpr(fd.Body, n, n.X)
						return before, render(fset, n.X)
					}, schemaSite{start: off(n.Pos()), end: off(n.End()), innerStart: off(n.X.Pos()), innerEnd: off(n.X.End()), plus: n.Op == token.ADD,
						// A switch would turn the untyped constant into an int
						// (1<<63 overflows it; a float context refuses it).
						unwrappable: literalConstant(n.X)})
				}
			case *ast.UnaryExpr:
				if n.Op == token.NOT {
					add(kindNot, n, func() (string, string) {
						before := render(fset, n)
						replaceExpr(fd.Body, n, n.X)
						return before, render(fset, n.X)
					}, schemaSite{start: off(n.Pos()), end: off(n.End()), innerStart: off(n.X.Pos()), innerEnd: off(n.X.End())})
				}
			case *ast.Ident:
				if n.Name == "true" || n.Name == "false" {
					other := map[string]string{"true": "false", "false": "true"}[n.Name]
					add(kindBool, n, func() (string, string) {
						before := n.Name
						n.Name = other
						return before, n.Name
					}, schemaSite{start: off(n.Pos()), end: off(n.End()), newText: other})
				}
			case *ast.ReturnStmt:
				for i, r := range n.Results {
					if id, ok := r.(*ast.Ident); ok && id.Name == "err" {
						add(kindReturnNil, n, func() (string, string) {
							before := render(fset, n)
							n.Results[i] = ast.NewIdent("nil")
							return before, render(fset, n)
						}, schemaSite{start: off(id.Pos()), end: off(id.End())})
					}
				}
			case *ast.BlockStmt:
				for i, st := range n.List {
					if es, ok := st.(*ast.ExprStmt); ok {
						if _, isCall := es.X.(*ast.CallExpr); isCall && !isPanic(es.X) {
							add(kindCall, st, func() (string, string) {
								before := render(fset, st)
								n.List[i] = &ast.EmptyStmt{Semicolon: st.Pos(), Implicit: true}
								return before, "(deleted)"
							}, schemaSite{start: off(st.Pos()), end: off(st.End())})
						}
					}
				}
			}
			return true
		})
	}
	return out
}

// constRanges lists the byte ranges of the constant declarations in body.
func constRanges(body *ast.BlockStmt, off func(token.Pos) int) [][2]int {
	var out [][2]int
	ast.Inspect(body, func(n ast.Node) bool {
		if g, ok := n.(*ast.GenDecl); ok && g.Tok == token.CONST {
			out = append(out, [2]int{off(g.Pos()), off(g.End())})
		}
		return true
	})
	return out
}

// mutants lists every mutant of one file.
func mutants(path string, src []byte) ([]mutant, error) {
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, path, src, parser.ParseComments)
	if err != nil {
		return nil, err
	}
	var out []mutant
	for i, s := range sites(fset, file) {
		out = append(out, mutant{File: path, Line: s.line, Col: s.col, Func: s.fn, Kind: s.kind, index: i, schema: s.schema})
	}
	return out, nil
}

// apply returns the source of the file with mutant m applied, and fills in
// m's code before and after.
func apply(m *mutant, src []byte) ([]byte, error) {
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, m.File, src, parser.ParseComments)
	if err != nil {
		return nil, err
	}
	all := sites(fset, file)
	if m.index >= len(all) || all[m.index].kind != m.Kind {
		return nil, fmt.Errorf("%s: mutant %d of kind %s not found again", m.File, m.index, m.Kind)
	}
	m.Original, m.Mutated = all[m.index].apply()
	var buf bytes.Buffer
	if err := format.Node(&buf, fset, file); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func funcName(fd *ast.FuncDecl) string {
	if fd.Recv == nil || len(fd.Recv.List) == 0 {
		return fd.Name.Name
	}
	t := fd.Recv.List[0].Type
	if s, ok := t.(*ast.StarExpr); ok {
		t = s.X
	}
	if ix, ok := t.(*ast.IndexExpr); ok {
		t = ix.X
	}
	if id, ok := t.(*ast.Ident); ok {
		return id.Name + "." + fd.Name.Name
	}
	return fd.Name.Name
}

// literalConstant reports whether e is a constant made of literals alone
// (1<<63, 60*60): untyped, it takes the type its context gives it.
func literalConstant(e ast.Expr) bool {
	switch e := e.(type) {
	case *ast.BasicLit:
		return e.Kind != token.STRING
	case *ast.ParenExpr:
		return literalConstant(e.X)
	case *ast.UnaryExpr:
		return literalConstant(e.X)
	case *ast.BinaryExpr:
		return literalConstant(e.X) && literalConstant(e.Y)
	}
	return false
}

func isOne(e ast.Expr) bool {
	lit, ok := e.(*ast.BasicLit)
	return ok && lit.Kind == token.INT && lit.Value == "1"
}

// isPanic: deleting a panic only removes a crash on a path tests should not
// take; such mutants say nothing about the tests.
func isPanic(e ast.Expr) bool {
	call := e.(*ast.CallExpr)
	id, ok := call.Fun.(*ast.Ident)
	return ok && id.Name == "panic"
}

// replaceExpr swaps old for new wherever old is a direct child in root.
func replaceExpr(root ast.Node, old, new ast.Expr) {
	ast.Inspect(root, func(n ast.Node) bool {
		switch p := n.(type) {
		case *ast.BinaryExpr:
			p.X, p.Y = swapIf(p.X, old, new), swapIf(p.Y, old, new)
		case *ast.UnaryExpr:
			p.X = swapIf(p.X, old, new)
		case *ast.ParenExpr:
			p.X = swapIf(p.X, old, new)
		case *ast.CallExpr:
			for i := range p.Args {
				p.Args[i] = swapIf(p.Args[i], old, new)
			}
		case *ast.IndexExpr:
			p.Index = swapIf(p.Index, old, new)
		case *ast.SliceExpr:
			p.Low, p.High, p.Max = swapIf(p.Low, old, new), swapIf(p.High, old, new), swapIf(p.Max, old, new)
		case *ast.AssignStmt:
			for i := range p.Rhs {
				p.Rhs[i] = swapIf(p.Rhs[i], old, new)
			}
		case *ast.ReturnStmt:
			for i := range p.Results {
				p.Results[i] = swapIf(p.Results[i], old, new)
			}
		case *ast.IfStmt:
			p.Cond = swapIf(p.Cond, old, new)
		case *ast.ForStmt:
			p.Cond = swapIf(p.Cond, old, new)
		case *ast.KeyValueExpr:
			p.Value = swapIf(p.Value, old, new)
		case *ast.CompositeLit:
			for i := range p.Elts {
				p.Elts[i] = swapIf(p.Elts[i], old, new)
			}
		case *ast.ValueSpec:
			for i := range p.Values {
				p.Values[i] = swapIf(p.Values[i], old, new)
			}
		case *ast.CaseClause:
			for i := range p.List {
				p.List[i] = swapIf(p.List[i], old, new)
			}
		case *ast.SendStmt:
			p.Value = swapIf(p.Value, old, new)
		case *ast.IncDecStmt:
			p.X = swapIf(p.X, old, new)
		}
		return true
	})
}

func swapIf(e, old, new ast.Expr) ast.Expr {
	if e == old {
		return new
	}
	return e
}

func render(fset *token.FileSet, n ast.Node) string {
	var buf bytes.Buffer
	if err := format.Node(&buf, fset, n); err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(buf.String()), " ")
}
