package pipestreamv1_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// table builds a RoutingTable from "peer:succ,succ" specs; "peer:" is a
// route with no successors.
func table(specs ...string) *pb.RoutingTable {
	t := &pb.RoutingTable{}
	for _, s := range specs {
		peer, succ, _ := strings.Cut(s, ":")
		r := &pb.Route{Peer: peer}
		if succ != "" {
			r.Successors = strings.Split(succ, ",")
		}
		t.Routes = append(t.Routes, r)
	}
	return t
}

func TestValidate(t *testing.T) {
	abcd := []string{"a", "b", "c", "d"}
	tests := []struct {
		name    string
		table   *pb.RoutingTable
		primary string
		peers   []string
		wantErr string // substring of the error; empty for a valid table
	}{
		{name: "nil table is a star", table: nil, primary: "a", peers: abcd},
		{name: "empty table is a star", table: &pb.RoutingTable{}, primary: "a", peers: abcd},
		{name: "single peer, no table", primary: "a", peers: []string{"a"}},
		{name: "single peer, own route", table: table("a:"), primary: "a", peers: []string{"a"}},
		{name: "star", table: pb.Star("a", "b", "c", "d"), primary: "a", peers: abcd},
		{name: "chain", table: pb.Chain("a", "b", "c", "d"), primary: "a", peers: abcd},
		{name: "chain in another order", table: pb.Chain("c", "a", "d", "b"), primary: "c", peers: abcd},
		{name: "tree", table: table("a:b,c", "b:d"), primary: "a", peers: abcd},
		{name: "tree with leaf routes", table: table("d:", "b:d", "c:", "a:c,b"), primary: "a", peers: abcd},
		{name: "primary not first in group", table: table("c:a,b,d"), primary: "c", peers: abcd},

		{name: "empty primary", table: pb.Chain("a", "b"), primary: "", peers: []string{"a", "b"}, wantErr: "empty primary"},
		{name: "primary not in group", table: pb.Chain("a", "b"), primary: "x", peers: []string{"a", "b"}, wantErr: `primary "x" is not in the group`},
		{name: "primary not in group, empty table", primary: "x", peers: []string{"a", "b"}, wantErr: `primary "x" is not in the group`},
		{name: "empty group", primary: "a", peers: nil, wantErr: `primary "a" is not in the group`},
		{name: "empty id in group", primary: "a", peers: []string{"a", ""}, wantErr: "empty peer id"},
		{name: "duplicate id in group", primary: "a", peers: []string{"a", "b", "a"}, wantErr: `peer "a" is listed twice`},
		{name: "route for unknown peer", table: table("a:b,c,d", "x:"), primary: "a", peers: abcd, wantErr: `route for peer "x", which is not in the group`},
		{name: "route with empty peer", table: table("a:b,c,d", ":"), primary: "a", peers: abcd, wantErr: `route for peer ""`},
		{name: "nil route", table: &pb.RoutingTable{Routes: []*pb.Route{nil}}, primary: "a", peers: abcd, wantErr: `route for peer ""`},
		{name: "unknown successor", table: table("a:b,c,d,x"), primary: "a", peers: abcd, wantErr: `peer "a" forwards to "x", which is not in the group`},
		{name: "self-loop", table: table("a:b,c", "b:d,b"), primary: "a", peers: abcd, wantErr: `peer "b" forwards to itself`},
		{name: "primary self-loop", table: table("a:a,b,c,d"), primary: "a", peers: abcd, wantErr: `peer "a" forwards to itself`},
		{name: "primary has a predecessor", table: table("a:b", "b:c,d,a"), primary: "a", peers: abcd, wantErr: `peer "b" forwards to the primary "a"`},
		{name: "two predecessors", table: table("a:b,c", "b:d", "c:d"), primary: "a", peers: abcd, wantErr: `peer "d" has two predecessors, "b" and "c"`},
		{name: "successor listed twice", table: table("a:b,c,b,d"), primary: "a", peers: abcd, wantErr: `peer "a" lists successor "b" twice`},
		{name: "two routes for a peer", table: table("a:b", "b:c", "b:d"), primary: "a", peers: abcd, wantErr: `peer "b" has two routes`},
		{name: "peer not covered", table: table("a:b,c"), primary: "a", peers: abcd, wantErr: `peer "d" has no predecessor`},
		{name: "chain too short", table: pb.Chain("a"), primary: "a", peers: []string{"a", "b"}, wantErr: `peer "b" has no predecessor`},
		{name: "detached subtree", table: table("a:b", "c:d"), primary: "a", peers: abcd, wantErr: `peer "c" has no predecessor`},
		{name: "detached cycle", table: table("a:b", "c:d", "d:c"), primary: "a", peers: abcd, wantErr: "cycle"},
		{name: "tail into a cycle", table: table("a:", "b:c", "c:d", "d:b"), primary: "a", peers: abcd, wantErr: "cycle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.table.Validate(tt.primary, tt.peers)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, pb.ErrInvalidRoutingTable) {
				t.Fatalf("Validate = %v, want an error wrapping ErrInvalidRoutingTable", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %q, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestSuccessors(t *testing.T) {
	tree := table("a:b,c", "b:d", "c:")
	tests := []struct {
		table *pb.RoutingTable
		peer  string
		want  []string
	}{
		{tree, "a", []string{"b", "c"}},
		{tree, "b", []string{"d"}},
		{tree, "c", nil},
		{tree, "d", nil},
		{tree, "x", nil},
		{nil, "a", nil},
		{&pb.RoutingTable{}, "a", nil},
	}
	for _, tt := range tests {
		if got := tt.table.Successors(tt.peer); !slices.Equal(got, tt.want) {
			t.Errorf("Successors(%q) of %v = %q, want %q", tt.peer, tt.table, got, tt.want)
		}
	}
}

func TestStarAndChain(t *testing.T) {
	tests := []struct {
		name string
		got  *pb.RoutingTable
		want *pb.RoutingTable
	}{
		{"star", pb.Star("a", "b", "c"), table("a:b,c")},
		{"star of one", pb.Star("a"), table("a:")},
		{"chain", pb.Chain("a", "b", "c"), table("a:b", "b:c", "c:")},
		{"chain of one", pb.Chain("a"), table("a:")},
		{"chain of none", pb.Chain(), &pb.RoutingTable{}},
	}
	for _, tt := range tests {
		if !proto.Equal(tt.got, tt.want) {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestStarCopiesItsArguments(t *testing.T) {
	others := []string{"b", "c"}
	s := pb.Star("a", others...)
	others[0] = "x"
	if got := s.Successors("a"); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("Successors(a) = %q after the caller reused its slice, want [b c]", got)
	}
}

func TestOrStar(t *testing.T) {
	group := []string{"b", "a", "c"}
	if got, want := (*pb.RoutingTable)(nil).OrStar("a", group), table("a:b,c"); !proto.Equal(got, want) {
		t.Errorf("nil.OrStar = %v, want %v", got, want)
	}
	if got, want := (&pb.RoutingTable{}).OrStar("a", []string{"a"}), table("a:"); !proto.Equal(got, want) {
		t.Errorf("empty.OrStar over one peer = %v, want %v", got, want)
	}
	chain := pb.Chain("a", "b", "c")
	if got := chain.OrStar("a", group); got != chain {
		t.Errorf("OrStar on a non-empty table = %v, want the table itself", got)
	}
}

func TestHasOption(t *testing.T) {
	h := &pb.DataStreamPacketHeader{Options: uint32(pb.DataStreamPacketHeader_SYNC | pb.DataStreamPacketHeader_CLOSE)}
	tests := []struct {
		h    *pb.DataStreamPacketHeader
		o    pb.DataStreamPacketHeader_Option
		want bool
	}{
		{h, pb.DataStreamPacketHeader_SYNC, true},
		{h, pb.DataStreamPacketHeader_CLOSE, true},
		{h, pb.DataStreamPacketHeader_FLUSH, false},
		{h, pb.DataStreamPacketHeader_OPTION_NONE, false},
		{nil, pb.DataStreamPacketHeader_CLOSE, false},
	}
	for _, tt := range tests {
		if got := tt.h.HasOption(tt.o); got != tt.want {
			t.Errorf("HasOption(%v) on options %b = %v, want %v", tt.o, tt.h.GetOptions(), got, tt.want)
		}
	}
	// Every Option value but OPTION_NONE is a known bit, and nothing else.
	var all uint32
	for v := range pb.DataStreamPacketHeader_Option_name {
		all |= uint32(v)
	}
	if pb.KnownOptions != all {
		t.Errorf("KnownOptions = %b, want %b, the bits of every Option value", pb.KnownOptions, all)
	}
}

// FuzzValidate builds a group and a routing table from the fuzz input and
// checks that Validate never panics and that a table it accepts really is a
// tree rooted at the primary that reaches every peer exactly once.
//
// Input: data[0] picks the group size (1..8), data[1] the primary; each
// further byte with the high bit set starts a route for peer b&0x7f,
// any other byte adds successor b to the current route. Peer numbers wrap
// modulo size+2, so the last two name the empty id and a stranger.
func FuzzValidate(f *testing.F) {
	f.Add([]byte{4, 0, 0x80, 1, 2, 3})             // star
	f.Add([]byte{4, 0, 0x80, 1, 0x81, 2, 0x82, 3}) // chain
	f.Add([]byte{4, 0, 0x80, 1, 0x81, 0})          // back to the primary
	f.Add([]byte{4, 0, 0x80, 1, 0x82, 3, 0x83, 2}) // detached cycle
	f.Add([]byte{3, 1, 0x81, 0, 2, 4})             // a stranger
	f.Add([]byte{2, 0})                            // empty table
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		n := 1 + int(data[0])%8
		id := func(b byte) string {
			switch i := int(b&0x7f) % (n + 2); i {
			case n:
				return ""
			case n + 1:
				return "stranger"
			default:
				return fmt.Sprintf("p%d", i)
			}
		}
		peers := make([]string, n)
		for i := range peers {
			peers[i] = fmt.Sprintf("p%d", i)
		}
		primary := peers[int(data[1])%n]
		rt := &pb.RoutingTable{}
		for _, b := range data[2:] {
			if b&0x80 != 0 || len(rt.Routes) == 0 {
				rt.Routes = append(rt.Routes, &pb.Route{Peer: id(b)})
				continue
			}
			r := rt.Routes[len(rt.Routes)-1]
			r.Successors = append(r.Successors, id(b))
		}

		if err := rt.Validate(primary, peers); err != nil {
			if !errors.Is(err, pb.ErrInvalidRoutingTable) {
				t.Fatalf("Validate = %v, does not wrap ErrInvalidRoutingTable", err)
			}
			return
		}
		tree := rt.OrStar(primary, peers)
		seen := map[string]bool{primary: true}
		queue := []string{primary}
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			for _, s := range tree.Successors(p) {
				if seen[s] {
					t.Fatalf("accepted %v: %q is reached twice", rt, s)
				}
				seen[s] = true
				queue = append(queue, s)
			}
		}
		for _, p := range peers {
			if !seen[p] {
				t.Fatalf("accepted %v: %q is not reached from %q", rt, p, primary)
			}
		}
		if len(seen) != len(peers) {
			t.Fatalf("accepted %v: reaches %d peers, the group has %d", rt, len(seen), len(peers))
		}
	})
}

func BenchmarkValidate(b *testing.B) {
	peers := []string{"s1", "s2", "s3", "s4", "s5"}
	tables := []struct {
		name  string
		table *pb.RoutingTable
	}{
		{"star", pb.Star(peers[0], peers[1:]...)},
		{"chain", pb.Chain(peers...)},
	}
	for _, tt := range tables {
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := tt.table.Validate(peers[0], peers); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
