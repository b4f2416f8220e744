// Package cases has a case expression that every call evaluates and whose
// case no test reaches.
package cases

// Name names x.
func Name(x int) string {
	switch {
	case x == 1000000:
		return "a million"
	}
	return "a number"
}
