package backoff_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/backoff"
)

func TestRetry(t *testing.T) {
	fast := backoff.Policy{First: time.Millisecond, Max: 4 * time.Millisecond, What: "test"}
	boom := errors.New("boom")
	t.Run("UntilSuccess", func(t *testing.T) {
		n := 0
		err := backoff.Retry(context.Background(), fast, func() error {
			if n++; n < 5 {
				return boom
			}
			return nil
		})
		if err != nil || n != 5 {
			t.Errorf("err %v after %d calls, want nil after 5", err, n)
		}
	})
	t.Run("Tries", func(t *testing.T) {
		n := 0
		p := fast
		p.Tries = 3
		if err := backoff.Retry(context.Background(), p, func() error { n++; return boom }); !errors.Is(err, boom) || n != 3 {
			t.Errorf("err %v after %d calls, want boom after 3", err, n)
		}
	})
	t.Run("Permanent", func(t *testing.T) {
		n := 0
		err := backoff.Retry(context.Background(), fast, func() error { n++; return backoff.Permanent(boom) })
		if err != boom || n != 1 {
			t.Errorf("err %v after %d calls, want boom itself after 1", err, n)
		}
	})
	t.Run("ContextEnds", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		n := 0
		err := backoff.Retry(ctx, fast, func() error {
			if n++; n == 3 {
				cancel()
			}
			return boom
		})
		if !errors.Is(err, boom) || n != 3 {
			t.Errorf("err %v after %d calls, want boom after 3", err, n)
		}
	})
}

// A dependency that answers on the third try.
func ExampleRetry() {
	tries := 0
	err := backoff.Retry(context.Background(), backoff.Policy{First: time.Millisecond, Max: 10 * time.Millisecond, What: "connect to redis"}, func() error {
		if tries++; tries < 3 {
			return errors.New("connection refused")
		}
		return nil
	})
	fmt.Println(tries, err)
	// Output: 3 <nil>
}
