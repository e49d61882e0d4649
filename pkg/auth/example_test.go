package auth_test

import (
	"fmt"
	"time"

	"github.com/ztrade/pyrunner/pkg/auth"
)

// Mint a token for an operator and check it as the API does.
func Example() {
	secret := []byte("a-long-random-secret-from-SCRIPT_JWT_SECRET")
	tok, err := (&auth.Minter{Secret: secret}).Mint("alice", []string{auth.ScopeScriptsRun}, time.Hour, nil)
	if err != nil {
		panic(err)
	}
	p, err := (&auth.Verifier{Secret: secret, Leeway: 30 * time.Second}).Verify(tok)
	fmt.Println(p.Subject, p.Allows(auth.ScopeScriptsRun), p.Allows(auth.ScopeResearchRun), err)

	_, err = (&auth.Verifier{Secret: []byte("another secret")}).Verify(tok)
	fmt.Println(err)
	// Output:
	// alice true false <nil>
	// Invalid token: signature verification failed
}
