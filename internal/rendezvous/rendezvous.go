// Package rendezvous is weighted rendezvous (highest random weight) hashing: every
// node orders the same items by a score that depends only on the node's key and the
// item, so that across many nodes each item comes first on a share of them equal to
// its share of the total weight, and removing an item moves only the nodes that had
// it first.
//
// The score of an item is -weight / ln(h), with h a uniform number in (0, 1) taken
// from SHA-256 of the item's ID and the key; the largest score comes first. -ln(h) is
// exponential, so the first item is the one whose exponential of rate weight is the
// smallest, which happens with probability weight/sum(weights).
//
// The logarithm is the package's own, in basic float64 operations with every product
// rounded explicitly, so that the order is the same on every platform: math.Log has
// assembly versions on some architectures, and Go may fuse a multiply and an add on
// others, either of which can change a last bit. The hash input and its mapping to h
// are those of registryd/peers, which picks a blob's owner among the masters with
// math.Log: the two agree unless a last bit of the logarithm decides an order.
//
// The order is a contract between releases: nodes of different versions must agree
// on it, and a node that restarts on a new version must not move its load. The
// encoding of the hash input, the hash, the mapping to h, the logarithm and the
// formula must therefore never change for the same input; TestGolden pins them.
package rendezvous

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"slices"
)

// Item is one choice, such as a master registry.
type Item struct {
	// ID names the item; it is what the score is computed from, so it must be the
	// same on every node (e.g. the endpoint's URL) and unique among the items.
	ID string
	// Weight is the item's relative share of first choices. An item whose weight is
	// not a positive finite number (zero, negative, NaN, ±Inf) comes after every item
	// with such a weight; those items are ordered among themselves as if each had
	// weight 1, so that they still spread across nodes.
	Weight float64
}

// Order returns the indexes of items, best first, for the node named key. Equal
// scores, which only duplicate IDs make likely, are ordered by ID and then by index.
// The result is never nil for a non-empty items and is empty for an empty one.
func Order(key string, items []Item) []int {
	type ranked struct {
		i      int
		usable bool
		score  float64
	}
	rs := make([]ranked, len(items))
	for i, it := range items {
		usable := it.Weight > 0 && !math.IsInf(it.Weight, 1)
		w := it.Weight
		if !usable {
			w = 1
		}
		rs[i] = ranked{i: i, usable: usable, score: score(key, it.ID, w)}
	}
	slices.SortFunc(rs, func(a, b ranked) int {
		if a.usable != b.usable {
			if a.usable {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		if c := cmp.Compare(items[a.i].ID, items[b.i].ID); c != 0 {
			return c
		}
		return cmp.Compare(a.i, b.i)
	})
	order := make([]int, len(rs))
	for j, r := range rs {
		order[j] = r.i
	}
	return order
}

// score is the weighted rendezvous score of the item id on the node key.
func score(key, id string, weight float64) float64 {
	return -weight / ln(unit(key, id))
}

// ln is the natural logarithm of x > 0 (finite), within a few units in the last
// place: with x = m·2^e and m in [√½, √2), ln x = e·ln 2 + 2·atanh(s), where
// s = (m-1)/(m+1), |s| < 0.172, and atanh's odd series, summed by Horner's rule to
// below 1e-23, is s·(1 + s²/3 + s⁴/5 + …). ln 2 is split so that e·ln2Hi is exact.
func ln(x float64) float64 {
	const (
		ln2Hi = 6.93147180369123816490e-01 // ln 2 to 32 bits: e·ln2Hi is exact
		ln2Lo = 1.90821492927058770002e-10 // ln 2 - ln2Hi
	)
	m, e := math.Frexp(x)
	if m < math.Sqrt2/2 {
		m *= 2
		e--
	}
	s := (m - 1) / (m + 1)
	s2 := float64(s * s)
	p := 1.0 / 29
	for k := 27; k >= 3; k -= 2 {
		p = float64(p*s2) + 1/float64(k)
	}
	atanh := s + float64(s*float64(s2*p))
	k := float64(e)
	return float64(k*ln2Hi) + (float64(k*ln2Lo) + 2*atanh)
}

// unit maps (key, id) to a uniform number strictly inside (0, 1): the top 53 bits of
// SHA-256 over the id, a zero byte and the key. Within one Order the key is fixed,
// so two IDs never hash the same input.
func unit(key, id string) float64 {
	b := make([]byte, 0, len(id)+1+len(key))
	b = append(append(append(b, id...), 0), key...)
	sum := sha256.Sum256(b)
	x := binary.BigEndian.Uint64(sum[:8])
	// Adding one half keeps h off 0 (ln would be -Inf) and off 1 (ln would be 0).
	return (float64(x>>11) + 0.5) / (1 << 53)
}
