package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/projector"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/projections"
)

// checkpointFile is where the server keeps its projections' checkpoint,
// in the data directory.
const checkpointFile = "projections.checkpoint"

// auditStore is the store audit reads, closed when it is done.
type auditStore interface {
	projector.AuditStore
	Close() error
}

// runAudit replays every stream and checks the delivery invariants. Exit
// status: 0 clean, 1 violations found, 2 the audit could not run.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	flags := newFlagSet("audit", "", stdout)
	dataDir := flags.String("data-dir", "./postbox-data", "data directory: the embedded store, opened read-only (works while the server runs), and the projections checkpoint")
	storeURL := flags.String("store", "", "event store: empty for the embedded store in --data-dir, or an esdb:// connection string")
	asJSON := flags.Bool("json", false, "print the report as one line of protojson (postbox.admin.v1.AuditReport)")
	given, err := parseFlags(flags, args, getenv)
	if err != nil {
		return err
	}

	var (
		store auditStore
		opts  projector.AuditOptions
	)
	if *storeURL == "" {
		store, err = embedded.OpenReadOnly(ctx, *dataDir, embedded.Options{})
	} else {
		store, err = esdb.Open(ctx, *storeURL, nil)
	}
	// The server keeps its projections' checkpoint in the data directory
	// whatever the store: compare it when there is one (with EventStoreDB,
	// only when the directory is named, since the default is a guess).
	if *storeURL == "" || given["data-dir"] {
		opts.CheckpointPath = filepath.Join(*dataDir, checkpointFile)
	}
	if err != nil {
		return exitError{code: 2, err: fmt.Errorf("audit: %w", err)}
	}
	defer store.Close()

	progress, done := auditProgress(stderr)
	began := time.Now()
	report, err := projector.Audit(ctx, store, opts, progress)
	took := time.Since(began)
	done()
	if err != nil {
		return exitError{code: 2, err: err}
	}

	if *asJSON {
		if err := printJSON(stdout, auditMessage(report)); err != nil {
			return exitError{code: 2, err: fmt.Errorf("audit: write the report: %w", err)}
		}
	} else if err := printAuditReport(stdout, report); err != nil {
		return exitError{code: 2, err: fmt.Errorf("audit: write the report: %w", err)}
	} else {
		fmt.Fprintf(stdout, "read in %v: %.0f records/s\n", took.Round(time.Millisecond), float64(report.Records)/max(took.Seconds(), 1e-9))
	}
	if !report.Clean() {
		return exitError{code: 1, err: fmt.Errorf("audit found %d violation(s)", len(report.Violations))}
	}
	return nil
}

// auditMessage is the report as the admin API's message, so that every
// --json prints protojson of one.
func auditMessage(r projections.Report) *adminv1.AuditReport {
	m := &adminv1.AuditReport{Records: r.Records, UnknownRecords: r.UnknownRecords, CheckpointChecked: r.CheckpointChecked, Clean: r.Clean(),
		FullHistory: len(r.Retained) == 0, SnapshotsChecked: r.SnapshotsChecked, SnapshotsUnchecked: r.SnapshotsUnchecked}
	for _, t := range r.Retained {
		m.Retained = append(m.Retained, &adminv1.AuditRetained{Stream: t.Stream, From: t.From, FromSnapshot: t.FromSnapshot})
	}
	for _, p := range r.Peers {
		mode := adminv1.Mode_MODE_PUSH
		if p.Mode == domain.ModeQueue.String() {
			mode = adminv1.Mode_MODE_QUEUE
		}
		m.Peers = append(m.Peers, &adminv1.AuditPeer{ServerId: p.ServerID, PeerId: p.PeerID, Head: p.Head, Delivered: p.Delivered,
			Skipped: p.Skipped, Pending: p.Pending, Mode: mode, Received: p.Received})
	}
	for _, v := range r.Violations {
		m.Violations = append(m.Violations, &adminv1.AuditViolation{Stream: v.Stream, Revision: v.Revision, Rule: v.Rule, Detail: v.Detail})
	}
	for _, s := range r.Skips {
		m.Skips = append(m.Skips, &adminv1.AuditSkip{Stream: s.Stream, Revision: s.Revision, ServerId: s.ServerID,
			FromSeq: s.FromSeq, ThroughSeq: s.ThroughSeq, Reason: s.Reason})
	}
	return m
}

func printAuditReport(w io.Writer, r projections.Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER ID\tPEER ID\tHEAD\tDELIVERED\tSKIPPED\tPENDING\tMODE\tRECEIVED")
	for _, p := range r.Peers {
		server := p.ServerID
		if server == "" {
			server = "(unknown)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%d\n", server, p.PeerID, p.Head, p.Delivered, p.Skipped, p.Pending, p.Mode, p.Received)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	summary := fmt.Sprintf("%d records, %s", r.Records, countOf(len(r.Peers), "peer", "peers"))
	if r.UnknownRecords > 0 {
		summary += fmt.Sprintf(", %d records of unknown types skipped", r.UnknownRecords)
	}
	if r.CheckpointChecked {
		summary += ", checkpoint compared"
	}
	if r.SnapshotsChecked > 0 || r.SnapshotsUnchecked > 0 {
		summary += fmt.Sprintf(", %d snapshot(s) (delivery, peers) compared with their records", r.SnapshotsChecked)
	}
	if r.SnapshotsUnchecked > 0 {
		summary += fmt.Sprintf(" (%d met too late to compare)", r.SnapshotsUnchecked)
	}
	fmt.Fprintf(w, "\n%s\n", summary)
	if len(r.Retained) == 0 {
		fmt.Fprintln(w, "range: every stream from its first record (full history)")
	} else {
		// What retention removed was not checked: say where checking began.
		fmt.Fprintf(w, "range: %d stream(s) truncated by retention, checked from:\n", len(r.Retained))
		for _, t := range r.Retained {
			from := "its first kept record"
			if t.FromSnapshot {
				from = "the snapshot of the records before it"
			}
			fmt.Fprintf(w, "  %s revision %d (%s)\n", t.Stream, t.From, from)
		}
	}
	if len(r.Skips) > 0 {
		fmt.Fprintf(w, "%d skip(s) by an operator, never delivered:\n", len(r.Skips))
		for _, s := range r.Skips {
			fmt.Fprintf(w, "  %s revision %d: %s events %d to %d: %q\n", s.Stream, s.Revision, s.ServerID, s.FromSeq, s.ThroughSeq, s.Reason)
		}
	}
	if len(r.TooLarge) > 0 {
		fmt.Fprintf(w, "%d received event(s) too large for the event store, only a marker stored:\n", len(r.TooLarge))
		for _, t := range r.TooLarge {
			seq := "no sequence number"
			if t.SenderSeq != nil {
				seq = fmt.Sprintf("sequence %d", *t.SenderSeq)
			}
			fmt.Fprintf(w, "  %s revision %d: from %s, %s, %d bytes\n", t.Stream, t.Revision, t.ServerID, seq, t.Bytes)
		}
	}
	if r.Clean() {
		_, err := fmt.Fprintln(w, "no violations")
		return err
	}
	fmt.Fprintf(w, "%d violation(s):\n", len(r.Violations))
	for _, v := range r.Violations {
		fmt.Fprintf(w, "  %s revision %d: %s: %s\n", v.Stream, v.Revision, v.Rule, v.Detail)
	}
	return nil
}

// auditProgress returns a progress callback that redraws one line on
// stderr, at most a few times a second, only when stderr is a terminal (a
// log file or a pipe gets nothing); done ends the line.
func auditProgress(stderr io.Writer) (progress func(uint64), done func()) {
	f, ok := stderr.(*os.File)
	if !ok || !isTerminal(f) {
		return nil, func() {}
	}
	var last time.Time
	drawn := false
	progress = func(n uint64) {
		if now := time.Now(); now.Sub(last) >= 200*time.Millisecond {
			last, drawn = now, true
			fmt.Fprintf(f, "\raudit: %d records read", n)
		}
	}
	done = func() {
		if drawn {
			fmt.Fprint(f, "\r\033[K")
		}
	}
	return progress, done
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// countOf is n and the noun for it: "1 peer", "3 peers".
func countOf(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
