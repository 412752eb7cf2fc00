package rendezvous

import (
	"fmt"
	"math"
	"slices"
	"testing"
)

const nodes = 10000

func nodeName(i int) string { return fmt.Sprintf("node-%d", i) }

func items(weights ...float64) []Item {
	its := make([]Item, len(weights))
	for i, w := range weights {
		its[i] = Item{ID: fmt.Sprintf("https://10.0.0.%d:5001", i+1), Weight: w}
	}
	return its
}

// ids returns the IDs of items in the order Order gives for key.
func ids(key string, its []Item) []string {
	var out []string
	for _, i := range Order(key, its) {
		out = append(out, its[i].ID)
	}
	return out
}

func TestFirstChoiceShares(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		weights []float64
		want    []float64 // percent of nodes with the item first
	}{
		{"3:1:1", []float64{3, 1, 1}, []float64{60, 20, 20}},
		{"1:1:1", []float64{1, 1, 1}, []float64{100.0 / 3, 100.0 / 3, 100.0 / 3}},
		{"1:3:1", []float64{1, 3, 1}, []float64{20, 60, 20}},
		{"2:1", []float64{2, 1}, []float64{200.0 / 3, 100.0 / 3}},
		{"fractional 0.5:0.5:1", []float64{0.5, 0.5, 1}, []float64{25, 25, 50}},
		// Items without a usable weight are never first while one has one.
		{"0:1:1", []float64{0, 1, 1}, []float64{0, 50, 50}},
		// With none usable, they spread as if equal.
		{"0:0:0", []float64{0, 0, 0}, []float64{100.0 / 3, 100.0 / 3, 100.0 / 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			its := items(tt.weights...)
			first := make([]int, len(its))
			for n := range nodes {
				first[Order(nodeName(n), its)[0]]++
			}
			for i, want := range tt.want {
				got := 100 * float64(first[i]) / nodes
				if math.Abs(got-want) > 1.5 {
					t.Errorf("item %d (weight %g) first on %.2f%% of nodes, want %.2f%% ± 1.5", i, tt.weights[i], got, want)
				}
			}
		})
	}
}

// Removing an item leaves every node's order of the others as it was: only the nodes
// that had it first change their first choice.
func TestMinimalDisruption(t *testing.T) {
	t.Parallel()
	its := items(3, 1, 1, 2, 1)
	for removed := range its {
		t.Run(its[removed].ID, func(t *testing.T) {
			t.Parallel()
			rest := slices.Delete(slices.Clone(its), removed, removed+1)
			moved, hadIt := 0, 0
			for n := range nodes {
				key := nodeName(n)
				before := ids(key, its)
				after := ids(key, rest)
				want := slices.DeleteFunc(slices.Clone(before), func(id string) bool { return id == its[removed].ID })
				if !slices.Equal(after, want) {
					t.Fatalf("%s: order %v after removing %s, want %v (before %v)", key, after, its[removed].ID, want, before)
				}
				if before[0] == its[removed].ID {
					hadIt++
				}
				if after[0] != before[0] {
					moved++
				}
			}
			if moved != hadIt {
				t.Errorf("%d nodes changed their first choice, want exactly the %d that had %s first", moved, hadIt, its[removed].ID)
			}
		})
	}
}

func TestOrderRules(t *testing.T) {
	t.Parallel()
	nan, inf := math.NaN(), math.Inf(1)
	tests := []struct {
		name  string
		items []Item
		// check is applied to the order of every node.
		check func(order []int) error
	}{
		{"empty", nil, func(o []int) error {
			if o == nil || len(o) != 0 {
				return fmt.Errorf("got %#v, want an empty non-nil slice", o)
			}
			return nil
		}},
		{"single", items(1), wantOrder(0)},
		{"single zero weight", items(0), wantOrder(0)},
		{"single negative weight", items(-5), wantOrder(0)},
		{"zero weight last", items(1, 0, 2), lastAre(1)},
		{"negative weight last", items(-1, 1), lastAre(0)},
		{"NaN weight last", items(nan, 1, 1), lastAre(0)},
		{"+Inf weight last", items(1, inf), lastAre(1)},
		{"-Inf weight last", items(math.Inf(-1), 1), lastAre(0)},
		{"several unusable last", items(0, 1, -1, 1, nan), lastAre(0, 2, 4)},
		// Duplicate IDs have equal scores: the earlier index comes first.
		{"duplicate IDs by index", []Item{{"a", 1}, {"a", 1}, {"a", 1}}, wantOrder(0, 1, 2)},
		{"duplicate IDs, heavier first", []Item{{"a", 1}, {"a", 2}}, wantOrder(1, 0)},
		{"permutation", items(3, 1, 1, 2), permutation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for n := range 1000 {
				if err := tt.check(Order(nodeName(n), tt.items)); err != nil {
					t.Fatalf("%s: %v", nodeName(n), err)
				}
			}
		})
	}
}

func wantOrder(want ...int) func([]int) error {
	return func(o []int) error {
		if !slices.Equal(o, want) {
			return fmt.Errorf("order %v, want %v", o, want)
		}
		return nil
	}
}

// lastAre checks that the indexes idx, in any order, are the last of the order.
func lastAre(idx ...int) func([]int) error {
	return func(o []int) error {
		if err := permutation(o); err != nil {
			return err
		}
		tail := slices.Sorted(slices.Values(o[len(o)-len(idx):]))
		if !slices.Equal(tail, idx) {
			return fmt.Errorf("order %v, want %v last", o, idx)
		}
		return nil
	}
}

func permutation(o []int) error {
	s := slices.Sorted(slices.Values(o))
	for i, v := range s {
		if v != i {
			return fmt.Errorf("order %v is not a permutation of 0..%d", o, len(o)-1)
		}
	}
	return nil
}

// The order follows the IDs, not their positions: every node ranks the same items the
// same way however its list is sorted.
func TestOrderIndependentOfPosition(t *testing.T) {
	t.Parallel()
	its := items(3, 1, 1, 2, 1)
	rev := slices.Clone(its)
	slices.Reverse(rev)
	for n := range 1000 {
		key := nodeName(n)
		if a, b := ids(key, its), ids(key, rev); !slices.Equal(a, b) {
			t.Fatalf("%s: %v for the list, %v for it reversed", key, a, b)
		}
		if a, b := Order(key, its), Order(key, its); !slices.Equal(a, b) {
			t.Fatalf("%s: two calls gave %v and %v", key, a, b)
		}
	}
}

// TestGolden pins the order, the hash and the score to the bit: they must never
// change between releases for the same input. A failure here means the hash, its
// input encoding, the logarithm or the formula changed; change them only with a new
// package, never by updating these values.
func TestGolden(t *testing.T) {
	t.Parallel()
	its := items(3, 1, 1, 2, 1)
	tests := []struct {
		key  string
		want []int
	}{
		{"node-0", []int{2, 0, 3, 4, 1}},
		{"node-1", []int{2, 0, 4, 1, 3}},
		{"node-2", []int{1, 2, 0, 4, 3}},
		{"node-42", []int{3, 0, 2, 1, 4}},
		{"node-9999", []int{0, 4, 3, 2, 1}},
		{"master-a", []int{0, 3, 2, 1, 4}},
		{"", []int{1, 4, 0, 3, 2}},
		{"ноды-π", []int{1, 3, 2, 0, 4}},
	}
	for _, tt := range tests {
		if got := Order(tt.key, its); !slices.Equal(got, tt.want) {
			t.Errorf("Order(%q) = %v, want %v", tt.key, got, tt.want)
		}
	}
	units := []struct {
		key, id string
		bits    uint64
	}{
		{"node-0", "https://10.0.0.1:5001", 0x3fcf76dd4eb34462},
		{"", "", 0x3fdb8d02e73fecdf},
		{"ab", "c", 0x3fe3e37ead6bc8f6},
		{"a", "bc", 0x3fb3e9bccb3b30ec},
	}
	for _, u := range units {
		if got := math.Float64bits(unit(u.key, u.id)); got != u.bits {
			t.Errorf("unit(%q, %q) = %#x (%g), want %#x (%g)", u.key, u.id, got, math.Float64frombits(got), u.bits, math.Float64frombits(u.bits))
		}
	}
	scores := []struct {
		key, id string
		weight  float64
		bits    uint64
	}{
		{"node-0", "https://10.0.0.1:5001", 3, 0x40011aa32ef9edca},
		{"node-9999", "https://10.0.0.5:5001", 1, 0x400652dc9c8f8e9d},
		{"", "", 0.5, 0x3fe2fbb2e745711a},
	}
	for _, sc := range scores {
		if got := math.Float64bits(score(sc.key, sc.id, sc.weight)); got != sc.bits {
			t.Errorf("score(%q, %q, %g) = %#x, want %#x", sc.key, sc.id, sc.weight, got, sc.bits)
		}
	}
}

func TestLn(t *testing.T) {
	t.Parallel()
	tests := []float64{
		0.5 / (1 << 53), 1.0 / (1 << 53), 1e-300, 1e-10, 0.001, 0.1, 0.25, 0.5,
		math.Sqrt2 / 2, math.Nextafter(math.Sqrt2/2, 0), 0.75, 0.9, 0.999999,
		1 - 1.0/(1<<53), 1, 1.5, math.Sqrt2, 2, 10, 1e10, 1e300,
	}
	for i := 1; i < 1000; i++ {
		tests = append(tests, float64(i)/1000)
	}
	for _, x := range tests {
		got, want := ln(x), math.Log(x)
		if want == 0 {
			if got != 0 {
				t.Errorf("ln(%g) = %g, want 0", x, got)
			}
			continue
		}
		if rel := math.Abs(got-want) / math.Abs(want); rel > 1e-15 {
			t.Errorf("ln(%g) = %.17g, math.Log %.17g: relative error %g", x, got, want, rel)
		}
	}
}
