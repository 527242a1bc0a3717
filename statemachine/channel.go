package statemachine

import "fmt"

// chanState is where a store's DataChannel is in its life.
type chanState uint8

const (
	chanOpen chanState = iota
	chanClosed
	chanCleaned
	chanLinked
	chanReleased // let go of with its data kept (FileStore's Release)
)

// storeChannel is what Link needs of a store's own DataChannel type to
// check that a channel it is given is one of its own, for the entry's
// stream.
type storeChannel interface {
	DataChannel
	owner() any // the store that opened the channel
	streamKey() StreamKey
}

// linkChannel returns ch, given to store's Link for the entry of key, as
// the store's own channel type C: the zero C when ch is nil, an error when
// ch belongs to another store or stream. name names the store's type in
// the error.
func linkChannel[C storeChannel](store any, name string, key StreamKey, ch DataChannel) (C, error) {
	var zero C
	if ch == nil {
		return zero, nil
	}
	c, ok := ch.(C)
	if !ok || c.owner() != store {
		return zero, fmt.Errorf("statemachine: link %v: channel %T does not belong to this %s", key, ch, name)
	}
	if k := c.streamKey(); k != key {
		return zero, fmt.Errorf("statemachine: link %v: channel is for stream %v", key, k)
	}
	return c, nil
}
