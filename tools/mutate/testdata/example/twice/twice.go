// Package twice makes the same change possible twice in one function, for
// the mutation tool's own test.
package twice

// Count counts the positive numbers of xs and then of ys.
func Count(xs, ys []int) int {
	n := 0
	for _, x := range xs {
		if x > 0 {
			n++
		}
	}
	for _, x := range ys {
		if x > 0 {
			n++
		}
	}
	return n
}
