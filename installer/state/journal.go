package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Step statuses in the journal.
const (
	StatusStarted = "started"
	StatusDone    = "done"
	StatusFailed  = "failed"
)

const (
	journalBucket = "journal" // seq (16 hex digits) -> Entry, append-only
	stepsBucket   = "steps"   // step name -> its latest Entry
)

// JournalBucket is the bucket every journal record is written to, for
// tools that watch the store's writes (WithCommitHook).
const JournalBucket = journalBucket

// Entry is one journal record: a step started, finished or failed.
type Entry struct {
	Seq    uint64    `json:"seq"`
	Step   string    `json:"step"`
	Status string    `json:"status"`
	Time   time.Time `json:"time"`
	Detail string    `json:"detail,omitempty"`
	Error  string    `json:"error,omitempty"`
}

// Journal records every step of an install before and after it runs, so a
// restarted airlock knows exactly what finished. Each record and the
// step's latest status are written in one durable transaction.
type Journal struct {
	store Store
	now   func() time.Time
}

// NewJournal returns the journal kept in store.
func NewJournal(store Store) *Journal {
	return &Journal{store: store, now: time.Now}
}

var stepRE = regexp.MustCompile(`^[a-z0-9][a-z0-9./_-]{0,199}$`)

// Record appends an entry for step and returns it once it is durable.
func (j *Journal) Record(step, status, detail string, stepErr error) (Entry, error) {
	if !stepRE.MatchString(step) {
		return Entry{}, fmt.Errorf("journal: invalid step name %q", step)
	}
	e := Entry{Step: step, Status: status, Time: j.now().UTC(), Detail: detail}
	if stepErr != nil {
		e.Error = stepErr.Error()
	}
	err := j.store.Update(func(tx Tx) error {
		seq, err := tx.NextSequence(journalBucket)
		if err != nil {
			return err
		}
		e.Seq = seq
		raw, err := json.Marshal(e)
		if err != nil {
			return err
		}
		if err := tx.Put(journalBucket, seqKey(seq), raw); err != nil {
			return err
		}
		return tx.Put(stepsBucket, step, raw)
	})
	if err != nil {
		return Entry{}, fmt.Errorf("journal %s %s: %w", step, status, err)
	}
	return e, nil
}

func seqKey(seq uint64) string { return fmt.Sprintf("%016x", seq) }

// Last returns the latest entry of step, if it ever ran.
func (j *Journal) Last(step string) (Entry, bool, error) {
	var e Entry
	var found bool
	err := j.store.View(func(tx Tx) error {
		raw := tx.Get(stepsBucket, step)
		if raw == nil {
			return nil
		}
		found = true
		return json.Unmarshal(raw, &e)
	})
	if err != nil {
		return Entry{}, false, fmt.Errorf("journal: read step %s: %w", step, err)
	}
	return e, found, nil
}

// Entries returns the whole journal in order.
func (j *Journal) Entries() ([]Entry, error) {
	var out []Entry
	err := j.store.View(func(tx Tx) error {
		return tx.ForEach(journalBucket, func(key string, raw []byte) error {
			var e Entry
			if err := json.Unmarshal(raw, &e); err != nil {
				return fmt.Errorf("entry %s: %w", key, err)
			}
			out = append(out, e)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("journal: read entries: %w", err)
	}
	return out, nil
}

// ErrStepFailed wraps the error of a step that Run ran.
var ErrStepFailed = errors.New("step failed")

// Run runs fn as step unless the journal says it already finished, in which
// case it returns skipped. The start is durable before fn runs and the
// outcome is durable before Run returns, so a step interrupted by a crash
// shows as started-but-not-done and runs again (steps must be idempotent).
func (j *Journal) Run(ctx context.Context, step string, fn func(context.Context) error) (skipped bool, err error) {
	last, found, err := j.Last(step)
	if err != nil {
		return false, err
	}
	if found && last.Status == StatusDone {
		return true, nil
	}
	if _, err := j.Record(step, StatusStarted, "", nil); err != nil {
		return false, err
	}
	if runErr := fn(ctx); runErr != nil {
		if _, err := j.Record(step, StatusFailed, "", runErr); err != nil {
			return false, errors.Join(fmt.Errorf("%w: %s: %w", ErrStepFailed, step, runErr), err)
		}
		return false, fmt.Errorf("%w: %s: %w", ErrStepFailed, step, runErr)
	}
	_, err = j.Record(step, StatusDone, "", nil)
	return false, err
}
