package audit

// Sink takes decision records as they are made. A reader of decisions (the
// node's event reader, `bridle run`'s stream of its workload) hands each
// record to the sinks registered on it, in order: the audit file, the
// metrics, a workload's subscribers, a terminal and its summary. A new
// consumer of records is one more sink, not an edit to a reader.
//
// Record is called from the reader's goroutine and must not block it for
// long: a slow sink holds up every sink after it and the ring behind them.
type Sink interface {
	Record(Record)
}

// SinkFunc is a function as a Sink.
type SinkFunc func(Record)

// Record calls f.
func (f SinkFunc) Record(r Record) { f(r) }

// Sinks hands each record to every sink in turn.
type Sinks []Sink

// Record gives r to each sink, in order.
func (s Sinks) Record(r Record) {
	for _, sink := range s {
		sink.Record(r)
	}
}
