// Package scripts is the scripts folder of quant-script-api: which files
// count as runnable scripts, and safe resolution of the paths clients send
// (a script or a working directory may never lead outside the root, not
// through "..", an absolute path or a symlink).
package scripts

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// skipDirs are folder names never scanned.
var skipDirs = map[string]bool{"__pycache__": true, ".git": true, ".venv": true, "venv": true, "env": true, "node_modules": true}

// skippedPart reports whether a path part excludes what is under it.
func skippedPart(name string) bool { return skipDirs[name] || strings.HasPrefix(name, ".") }

// Runnable reports whether rel (slash-separated, relative) names a file the
// scan would list: a .py file not starting with "_", under no skipped part.
func Runnable(rel string) bool {
	parts := strings.Split(rel, "/")
	for _, p := range parts[:len(parts)-1] {
		if skippedPart(p) {
			return false
		}
	}
	base := parts[len(parts)-1]
	return strings.HasSuffix(base, ".py") && !strings.HasPrefix(base, "_") && !strings.HasPrefix(base, ".")
}

// Folder is a scripts root with a cached scan.
type Folder struct {
	root string

	mu      sync.Mutex
	scanned []wire.Script
	at      time.Time
}

// New returns the folder at root (made absolute).
func New(root string) (*Folder, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("scripts: %w", err)
	}
	return &Folder{root: abs}, nil
}

// Root is the absolute scripts root.
func (f *Folder) Root() string { return f.root }

// Scripts returns the last scan, scanning first if there was none.
func (f *Folder) Scripts() ([]wire.Script, error) {
	f.mu.Lock()
	done := !f.at.IsZero()
	list := f.scanned
	f.mu.Unlock()
	if done {
		return list, nil
	}
	return f.Rescan()
}

// Rescan walks the root again.
func (f *Folder) Rescan() ([]wire.Script, error) {
	var list []wire.Script
	realRoot, err := filepath.EvalSymlinks(f.root)
	if err != nil {
		return nil, run.Errorf(run.ECodeUnavailable, "scripts root %s is not readable: %v", f.root, err)
	}
	err = filepath.WalkDir(f.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable entries are left out
		}
		if p == f.root {
			return nil
		}
		if d.IsDir() {
			if skippedPart(d.Name()) {
				return filepath.SkipDir
			}
			return nil
		}
		rel := filepath.ToSlash(strings.TrimPrefix(p, f.root+string(filepath.Separator)))
		if !Runnable(rel) {
			return nil
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil || !within(realRoot, real) {
			return nil // a link out of the root is not a script
		}
		fi, err := os.Stat(real)
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		list = append(list, wire.Script{Path: rel, SizeBytes: fi.Size(), MTime: float64(fi.ModTime().UnixNano()) / 1e9})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scripts: scan %s: %w", f.root, err)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Path < list[j].Path })
	if list == nil {
		list = []wire.Script{}
	}
	f.mu.Lock()
	f.scanned, f.at = list, time.Now()
	f.mu.Unlock()
	return list, nil
}

func within(root, p string) bool {
	return p == root || strings.HasPrefix(p, root+string(filepath.Separator))
}

// clean checks a client path stays inside the root lexically: relative to
// it, or absolute and under it (as quant-script-api accepts). It returns
// the relative slash form.
func (f *Folder) clean(what, p string) (string, error) {
	if p == "" {
		return "", run.Errorf(run.ECodeInvalid, "%s is required", what)
	}
	if filepath.IsAbs(p) {
		rel, err := filepath.Rel(f.root, filepath.Clean(p))
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			return "", run.Errorf(run.ECodeInvalid, "%s %q is outside the scripts root %s", what, p, f.root)
		}
		p = rel
	}
	c := filepath.ToSlash(filepath.Clean(p))
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", run.Errorf(run.ECodeInvalid, "%s %q leads outside the scripts root", what, p)
	}
	return c, nil
}

// Resolve turns a client's script path into its absolute path, checking it
// is a .py file inside the root. Any such file may be started by name, as
// in quant-script-api (_private.py, .hidden/x.py too): the scan rules
// (Runnable) decide only what is listed and what runs/all starts. It returns the cleaned relative
// path too. Errors are *run.Error: 400 for paths that are not allowed,
// 404 for a script that is not there.
func (f *Folder) Resolve(script string) (rel, abs string, err error) {
	rel, err = f.clean("script", script)
	if err != nil {
		return "", "", err
	}
	abs = filepath.Join(f.root, filepath.FromSlash(rel))
	real, err := filepath.EvalSymlinks(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", run.Errorf(run.ECodeNotFound, "script %q not found under %s", rel, f.root)
	} else if err != nil {
		return "", "", run.Errorf(run.ECodeInvalid, "script %q cannot be resolved: %v", rel, err)
	}
	realRoot, err := filepath.EvalSymlinks(f.root)
	if err != nil || !within(realRoot, real) {
		return "", "", run.Errorf(run.ECodeInvalid, "script %q resolves outside the scripts root", rel)
	}
	if fi, err := os.Stat(real); err != nil || !fi.Mode().IsRegular() {
		return "", "", run.Errorf(run.ECodeInvalid, "script %q is not a file", rel)
	}
	if !strings.HasSuffix(rel, ".py") {
		return "", "", run.Errorf(run.ECodeInvalid, "script %q must point to a .py file", rel)
	}
	return rel, abs, nil
}

// ResolveDir turns a client's cwd into an absolute folder inside the root
// ("" is the root itself).
func (f *Folder) ResolveDir(cwd string) (string, error) {
	if cwd == "" || cwd == "." {
		return f.root, nil
	}
	rel, err := f.clean("cwd", cwd)
	if err != nil {
		return "", err
	}
	abs := filepath.Join(f.root, filepath.FromSlash(rel))
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", run.Errorf(run.ECodeInvalid, "cwd %q does not exist under the scripts root", rel)
	}
	realRoot, _ := filepath.EvalSymlinks(f.root)
	if !within(realRoot, real) {
		return "", run.Errorf(run.ECodeInvalid, "cwd %q resolves outside the scripts root", rel)
	}
	if fi, err := os.Stat(real); err != nil || !fi.IsDir() {
		return "", run.Errorf(run.ECodeInvalid, "cwd %q is not a folder", rel)
	}
	return abs, nil
}
