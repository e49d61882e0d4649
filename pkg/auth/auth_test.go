package auth

import (
	"slices"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var secret = []byte("test-secret-of-enough-length-0123456789")

// sign makes a token with exactly claims, signed by method with key.
func sign(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestMintedTokenVerifies(t *testing.T) {
	m := &Minter{Secret: secret, Issuer: "pyrunner", Audience: "ops"}
	tok, err := m.Mint("alice", []string{ScopeScriptsRun, ScopeLogsRead}, time.Hour, map[string]any{"role": "operator"})
	if err != nil {
		t.Fatal(err)
	}
	v := &Verifier{Secret: secret, Issuer: "pyrunner", Audience: "ops"}
	p, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if p.Subject != "alice" || !slices.Equal(p.Scopes, []string{ScopeScriptsRun, ScopeLogsRead}) {
		t.Errorf("principal = %+v", p)
	}
	if !p.Allows(ScopeLogsRead) || p.Allows(ScopeResearchRun) {
		t.Errorf("Allows: %+v", p)
	}
}

// TestEveryCheckNamesItsReason: each rule refuses with a detail a client
// can act on.
func TestEveryCheckNamesItsReason(t *testing.T) {
	now := time.Now()
	valid := func(extra jwt.MapClaims) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "a", "scopes": []string{"*"}, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		for k, v := range extra {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	v := &Verifier{Secret: secret, Issuer: "pyrunner", Audience: "ops", Leeway: 5 * time.Second}
	aud := jwt.MapClaims{"iss": "pyrunner", "aud": "ops"}
	for _, tc := range []struct {
		name  string
		token string
		want  string // "" accepts
	}{
		{"valid", sign(t, jwt.SigningMethodHS256, secret, valid(aud)), ""},
		{"expired", sign(t, jwt.SigningMethodHS256, secret, valid(jwt.MapClaims{"iss": "pyrunner", "aud": "ops", "exp": now.Add(-time.Minute).Unix()})), "Token expired"},
		{"expired within the leeway", sign(t, jwt.SigningMethodHS256, secret, valid(jwt.MapClaims{"iss": "pyrunner", "aud": "ops", "exp": now.Add(-2 * time.Second).Unix()})), ""},
		{"not yet valid", sign(t, jwt.SigningMethodHS256, secret, valid(jwt.MapClaims{"iss": "pyrunner", "aud": "ops", "nbf": now.Add(time.Hour).Unix()})), "Token not yet valid (nbf)"},
		{"issued in the future", sign(t, jwt.SigningMethodHS256, secret, valid(jwt.MapClaims{"iss": "pyrunner", "aud": "ops", "iat": now.Add(time.Hour).Unix()})), "Token issued in the future (iat)"},
		{"no exp", sign(t, jwt.SigningMethodHS256, secret, valid(jwt.MapClaims{"iss": "pyrunner", "aud": "ops", "exp": nil})), "Invalid token: no exp claim (tokens must expire; SCRIPT_JWT_REQUIRE_EXP=false allows them)"},
		{"wrong secret", sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-0000"), valid(aud)), "Invalid token: signature verification failed"},
		{"HS512", sign(t, jwt.SigningMethodHS512, secret, valid(aud)), "Invalid token: signing algorithm not allowed (HS256 only)"},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid(aud)), "Invalid token: signing algorithm not allowed (HS256 only)"},
		{"malformed", "not.a.jwt", "Invalid token: malformed"},
		{"wrong issuer", sign(t, jwt.SigningMethodHS256, secret, valid(jwt.MapClaims{"iss": "else", "aud": "ops"})), "Invalid token issuer"},
		{"no issuer", sign(t, jwt.SigningMethodHS256, secret, valid(jwt.MapClaims{"aud": "ops"})), "Invalid token issuer: no iss claim"},
		{"no audience", sign(t, jwt.SigningMethodHS256, secret, valid(jwt.MapClaims{"iss": "pyrunner"})), "Invalid token audience: no aud claim"},
		{"wrong audience", sign(t, jwt.SigningMethodHS256, secret, valid(jwt.MapClaims{"iss": "pyrunner", "aud": "else"})), "Invalid token audience"},
		{"audience in a list", sign(t, jwt.SigningMethodHS256, secret, valid(jwt.MapClaims{"iss": "pyrunner", "aud": []string{"x", "ops"}})), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(tc.token)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || err.Error() != tc.want):
				t.Errorf("got %v, want %q", err, tc.want)
			}
			if e := (*Error)(nil); err != nil && !errorAs(err, &e) {
				t.Errorf("%T is not an *auth.Error", err)
			}
		})
	}
}

func errorAs(err error, e **Error) bool {
	x, ok := err.(*Error)
	*e = x
	return ok
}

func TestAllowNoExp(t *testing.T) {
	tok := sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "svc", "scope": "research:run"})
	if _, err := (&Verifier{Secret: secret}).Verify(tok); err == nil {
		t.Fatal("a token that never expires was accepted by default")
	}
	p, err := (&Verifier{Secret: secret, AllowNoExp: true}).Verify(tok)
	if err != nil || !p.Allows(ScopeResearchRun) {
		t.Fatalf("AllowNoExp: %+v %v", p, err)
	}
}

// TestScopeForms: "scopes" as a list or a space/comma string, and the
// OAuth "scope" string, all count; "*" allows everything.
func TestScopeForms(t *testing.T) {
	exp := time.Now().Add(time.Hour).Unix()
	v := &Verifier{Secret: secret}
	for _, tc := range []struct {
		claims jwt.MapClaims
		want   []string
	}{
		{jwt.MapClaims{"scopes": []string{"scripts:read", "logs:read"}}, []string{"scripts:read", "logs:read"}},
		{jwt.MapClaims{"scopes": "scripts:read,logs:read"}, []string{"scripts:read", "logs:read"}},
		{jwt.MapClaims{"scopes": "scripts:read logs:read"}, []string{"scripts:read", "logs:read"}},
		{jwt.MapClaims{"scope": "research:run scripts:run"}, []string{"research:run", "scripts:run"}},
		{jwt.MapClaims{"scopes": []any{"a", 7, "b"}, "scope": "c"}, []string{"a", "b", "c"}},
		{jwt.MapClaims{}, nil},
	} {
		tc.claims["exp"] = exp
		p, err := v.Verify(sign(t, jwt.SigningMethodHS256, secret, tc.claims))
		if err != nil || !slices.Equal(p.Scopes, tc.want) {
			t.Errorf("%v: scopes %v, err %v; want %v", tc.claims, p.Scopes, err, tc.want)
		}
	}
	if all := (Principal{Scopes: []string{ScopeAll}}); !all.Allows(ScopeScriptsRun) || !all.Allows("anything") {
		t.Error(`"*" does not allow everything`)
	}
	if none := (Principal{}); none.Allows(ScopeScriptsRead) {
		t.Error("no scopes allowed something")
	}
}

func TestEqual(t *testing.T) {
	if !Equal("s3cret", "s3cret") || Equal("s3cret", "s3cret ") || Equal("", "x") {
		t.Error("Equal")
	}
}
