package main

import (
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ztrade/pyrunner/pkg/auth"
	"github.com/ztrade/pyrunner/pkg/run"
)

const principalKey = "principal"

// require guards a route with a scope. Script routes need a JWT when
// SCRIPT_JWT_AUTH is on. Research routes need one too, and also whenever
// PYRUNNER_TOKEN is set; that static token (python-runner's) grants
// research:run. Missing or bad credentials are 401 with a detail naming
// the failed check; a valid token without the scope is 403.
//
// Given several scopes, it admits a request that may use any of them (the
// handler then checks the one it needs, see allowed).
func (s *server) require(scopes ...string) echo.MiddlewareFunc {
	research := slices.Contains(scopes, auth.ScopeResearchRun)
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			closed := func(scope string) bool { return !s.open(scope) }
			if !slices.ContainsFunc(scopes, closed) {
				return next(c)
			}
			tok, err := s.bearer(c)
			if err != nil {
				return err
			}
			if tok == "" && slices.ContainsFunc(scopes, s.open) {
				return next(c) // the handler checks the scope it needs
			}
			if tok == "" {
				return run.Errorf(run.ECodeUnauthorized, "Missing bearer token (Authorization: Bearer <token>)")
			}
			if research && s.isStaticToken(c, tok) {
				c.Set(principalKey, auth.Principal{Scopes: []string{auth.ScopeResearchRun}})
				return next(c)
			}
			p, err := s.verifyJWT(c, tok)
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(scopes, func(scope string) bool { return s.open(scope) || p.Allows(scope) }) {
				return run.Errorf(run.ECodeForbidden, "Insufficient scopes")
			}
			c.Set(principalKey, p)
			return next(c)
		}
	}
}

// open reports whether scope needs no credentials: no JWT auth, and for
// research no PYRUNNER_TOKEN either.
func (s *server) open(scope string) bool {
	return !s.cfg.JWTAuth && (scope != auth.ScopeResearchRun || s.cfg.Token == "")
}

// bearer is the request's bearer token ("" when it sent no
// Authorization header). A client blocked for bad tokens gets 429, a
// header that is not "Bearer <token>" 401.
func (s *server) bearer(c echo.Context) (string, error) {
	c.Response().Header().Set("WWW-Authenticate", "Bearer")
	if wait := s.tokenThrottle.blocked(clientIP(c)); wait > 0 {
		return "", run.TooMany(wait, "Too many bad tokens from this client; retry in %ds", int(wait.Seconds()+0.999))
	}
	h := c.Request().Header.Get("Authorization")
	if h == "" {
		return "", nil
	}
	scheme, tok, _ := strings.Cut(h, " ")
	tok = strings.TrimSpace(tok)
	if !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", run.Errorf(run.ECodeUnauthorized, "Invalid authorization header: expected 'Bearer <token>'")
	}
	return tok, nil
}

// isStaticToken reports whether tok is PYRUNNER_TOKEN.
func (s *server) isStaticToken(c echo.Context, tok string) bool {
	if s.cfg.Token == "" || !auth.Equal(tok, s.cfg.Token) {
		return false
	}
	s.tokenThrottle.reset(clientIP(c))
	return true
}

// verifyJWT checks tok as a JWT. A wrong token slows its client down
// (never another client) and is 401 naming the failed check.
func (s *server) verifyJWT(c echo.Context, tok string) (auth.Principal, error) {
	client := clientIP(c)
	badToken := func(detail string) error {
		slog.Warn("bad token", "client", client, "path", c.Path(), "detail", detail)
		time.Sleep(s.tokenThrottle.fail(client))
		return run.Errorf(run.ECodeUnauthorized, "%s", detail)
	}
	if s.verifier == nil {
		return auth.Principal{}, badToken("Invalid token")
	}
	p, err := s.verifier.Verify(tok)
	if err != nil {
		return auth.Principal{}, badToken(err.Error())
	}
	s.tokenThrottle.reset(client)
	return p, nil
}

// apiScopes are the scopes the routes require, one each.
var apiScopes = []string{auth.ScopeResearchRun, auth.ScopeScriptsRead, auth.ScopeScriptsRun, auth.ScopeLogsRead}

// grants is every scope the request may use, by require's rules: /mcp
// lists only the tools these allow. No credentials where some are needed
// is 401, credentials that allow nothing 403.
func (s *server) grants(c echo.Context) ([]string, auth.Principal, error) {
	var p auth.Principal
	tok, err := s.bearer(c)
	if err != nil {
		return nil, p, err
	}
	switch {
	case tok == "":
	case s.isStaticToken(c, tok):
		p = auth.Principal{Scopes: []string{auth.ScopeResearchRun}}
	default:
		if p, err = s.verifyJWT(c, tok); err != nil {
			return nil, p, err
		}
	}
	var out []string
	for _, scope := range apiScopes {
		if s.open(scope) || p.Allows(scope) {
			out = append(out, scope)
		}
	}
	switch {
	case len(out) > 0:
		return out, p, nil
	case tok == "":
		return nil, p, run.Errorf(run.ECodeUnauthorized, "Missing bearer token (Authorization: Bearer <token>)")
	}
	return nil, p, run.Errorf(run.ECodeForbidden, "Insufficient scopes")
}

// owner is the subject of the request's token ("" without one).
func owner(c echo.Context) string {
	p, _ := c.Get(principalKey).(auth.Principal)
	return p.Subject
}

// audit logs an action on scripts with who asked: the token's subject,
// or, without one, the client's address (clientIP).
func audit(c echo.Context, msg string, args ...any) {
	who := []any{"client", clientIP(c)}
	if o := owner(c); o != "" {
		who = []any{"owner", o}
	}
	slog.Info(msg, append(args, who...)...)
}

// adminToken is POST /v1/auth/admin/token: the admin secret exchanged for
// a token with every scope. 404 unless SCRIPT_JWT_ADMIN_SECRET is set.
func (s *server) adminToken(c echo.Context) error {
	if s.cfg.JWTAdminSecret == "" || s.minter == nil {
		return run.Errorf(run.ECodeNotFound, "Not Found: the admin token exchange is off (SCRIPT_JWT_ADMIN_SECRET, and SCRIPT_JWT_SECRET to sign with, are not set)")
	}
	client := clientIP(c)
	if wait := s.throttle.blocked(client); wait > 0 {
		return run.TooMany(wait, "Too many failed attempts; retry in %ds", int(wait.Seconds()+0.999))
	}
	var body struct {
		Secret string `json:"secret"`
	}
	if err := c.Bind(&body); err != nil || body.Secret == "" {
		return run.Errorf(run.ECodeInvalid, "body must be {\"secret\": \"...\"}")
	}
	if !auth.Equal(body.Secret, s.cfg.JWTAdminSecret) {
		time.Sleep(s.throttle.fail(client))
		return run.Errorf(run.ECodeUnauthorized, "Invalid admin secret")
	}
	s.throttle.reset(client)
	ttl := time.Duration(s.cfg.JWTExpireSeconds) * time.Second
	tok, err := s.minter.Mint("admin", []string{auth.ScopeAll}, ttl, map[string]any{"type": "admin", "role": "admin"})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": s.cfg.JWTExpireSeconds})
}

// clientIP is the request's client: the TCP peer, or, from a peer in
// PYRUNNER_TRUSTED_PROXIES, the right-most address of X-Forwarded-For
// that is not itself a trusted proxy (ipExtractor).
func clientIP(c echo.Context) string { return c.RealIP() }

// ipExtractor is how Echo finds a request's client address. Without
// trusted proxies it is the TCP peer: a forged X-Forwarded-For changes
// nothing. With them, only the listed networks are trusted (not Echo's
// default of every loopback and private address).
func ipExtractor(trusted []*net.IPNet) echo.IPExtractor {
	if len(trusted) == 0 {
		return echo.ExtractIPDirect()
	}
	opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
	for _, n := range trusted {
		opts = append(opts, echo.TrustIPRange(n))
	}
	return echo.ExtractIPFromXFFHeader(opts...)
}

// throttle slows repeated failures from one client (its IP): each failure
// waits a little longer (up to a second) before it is answered, and after
// free failures in a row the client gets 429 for a back-off that doubles
// with every further failure (up to maxBackoff), whatever it sends then.
// A success clears it. Other clients are never held up. It is per API
// process.
type throttle struct {
	mu      sync.Mutex
	free    int // failures in a row before the back-off starts
	clients map[string]*failures
}

type failures struct {
	n     int
	until time.Time
}

const maxBackoff = time.Minute

func newThrottle(free int) *throttle { return &throttle{free: free, clients: map[string]*failures{}} }

func (t *throttle) blocked(client string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.clients[client]; f != nil {
		return time.Until(f.until)
	}
	return 0
}

// fail records a failure and returns how long to delay the answer.
func (t *throttle) fail(client string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.clients[client]
	if f == nil {
		if len(t.clients) > 10000 { // forget clients whose back-off is over
			for k, v := range t.clients {
				if time.Now().After(v.until) {
					delete(t.clients, k)
				}
			}
		}
		f = &failures{}
		t.clients[client] = f
	}
	f.n++
	if f.n >= t.free {
		f.until = time.Now().Add(min(time.Second<<min(f.n-t.free, 10), maxBackoff))
	}
	return min(time.Duration(f.n)*100*time.Millisecond, time.Second)
}

func (t *throttle) reset(client string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.clients, client)
}
