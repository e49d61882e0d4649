// Package auth checks and mints the JWTs of quant-script-api (HS256 only,
// with exp/nbf leeway, optional iss/aud, scopes from "scopes" or "scope"),
// and compares static secrets in constant time. It is the only package
// that imports golang-jwt.
package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Scopes of the API; "*" grants them all.
const (
	ScopeScriptsRead = "scripts:read"
	ScopeScriptsRun  = "scripts:run"
	ScopeLogsRead    = "logs:read"
	ScopeResearchRun = "research:run"
	ScopeAll         = "*"
)

// Principal is who a request acts as.
type Principal struct {
	Subject string
	Scopes  []string
}

// Allows reports whether p holds scope (or "*").
func (p Principal) Allows(scope string) bool {
	for _, s := range p.Scopes {
		if s == scope || s == ScopeAll {
			return true
		}
	}
	return false
}

// Verifier checks tokens signed with one HS256 secret.
type Verifier struct {
	Secret   []byte
	Issuer   string // required iss when set
	Audience string // required in aud when set
	Leeway   time.Duration
	// AllowNoExp accepts tokens without exp (SCRIPT_JWT_REQUIRE_EXP=false);
	// by default a token that never expires is refused.
	AllowNoExp bool
}

// Error says which check a token failed; its text is meant for the client.
type Error struct{ Reason string }

func (e *Error) Error() string { return e.Reason }

// Verify parses and checks a token and returns its principal.
func (v *Verifier) Verify(token string) (Principal, error) {
	opts := []jwt.ParserOption{jwt.WithValidMethods([]string{"HS256"}), jwt.WithLeeway(v.Leeway), jwt.WithIssuedAt()}
	if !v.AllowNoExp {
		opts = append(opts, jwt.WithExpirationRequired())
	}
	if v.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(v.Issuer))
	}
	if v.Audience != "" {
		opts = append(opts, jwt.WithAudience(v.Audience))
	}
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(token, claims, func(*jwt.Token) (any, error) { return v.Secret, nil }, opts...)
	if err != nil {
		return Principal{}, &Error{Reason: reason(err)}
	}
	p := Principal{Scopes: scopes(claims)}
	p.Subject, _ = claims["sub"].(string)
	return p, nil
}

// reason turns golang-jwt's error into a detail naming the failed check.
func reason(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "Invalid token: malformed"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		if strings.Contains(err.Error(), "signing method") {
			return "Invalid token: signing algorithm not allowed (HS256 only)"
		}
		return "Invalid token: signature verification failed"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && strings.Contains(err.Error(), "exp claim"):
		return "Invalid token: no exp claim (tokens must expire; SCRIPT_JWT_REQUIRE_EXP=false allows them)"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "Token expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "Token not yet valid (nbf)"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "Token issued in the future (iat)"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "Invalid token issuer"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && strings.Contains(err.Error(), "iss claim"):
		return "Invalid token issuer: no iss claim"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "Invalid token audience"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && strings.Contains(err.Error(), "aud claim"):
		return "Invalid token audience: no aud claim"
	}
	return "Invalid token: " + err.Error()
}

// scopes reads "scopes" (a list or a space/comma-separated string) and the
// space-delimited "scope" claim.
func scopes(c jwt.MapClaims) []string {
	var out []string
	add := func(s string) {
		out = append(out, strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' })...)
	}
	switch v := c["scopes"].(type) {
	case []any:
		for _, x := range v {
			if s, ok := x.(string); ok {
				add(s)
			}
		}
	case string:
		add(v)
	}
	if s, ok := c["scope"].(string); ok {
		add(s)
	}
	return out
}

// Minter signs tokens.
type Minter struct {
	Secret   []byte
	Issuer   string
	Audience string
}

// Mint signs a token for sub with scopes, valid for ttl. extra claims are
// added (e.g. type, role).
func (m *Minter) Mint(sub string, scopes []string, ttl time.Duration, extra map[string]any) (string, error) {
	now := time.Now()
	id := make([]byte, 16)
	rand.Read(id)
	c := jwt.MapClaims{"sub": sub, "scopes": scopes, "iat": now.Unix(), "exp": now.Add(ttl).Unix(), "jti": hex.EncodeToString(id)}
	if m.Issuer != "" {
		c["iss"] = m.Issuer
	}
	if m.Audience != "" {
		c["aud"] = m.Audience
	}
	for k, v := range extra {
		c[k] = v
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(m.Secret)
	if err != nil {
		return "", fmt.Errorf("auth: sign token: %w", err)
	}
	return s, nil
}

// Equal compares two secrets in constant time.
func Equal(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
