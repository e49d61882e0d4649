package store

import (
	"strings"

	"github.com/ztrade/pyrunner/pkg/run"
)

// Lua that several scripts share. Each script is built by prepending
// what it needs, so a status list or a rule lives in one place.

// luaTerminal defines the table terminal[status] = true of the statuses a
// run never leaves, from run.TerminalStatuses (the one list of them).
var luaTerminal = func() string {
	parts := make([]string, 0, len(run.TerminalStatuses))
	for _, s := range run.TerminalStatuses {
		parts = append(parts, string(s)+"=true")
	}
	return "local terminal = {" + strings.Join(parts, ", ") + "}\n"
}()

// luaRecovering defines recovering(window): the seconds left until this
// Redis has been up for window seconds (0 once it has). Right after a
// restart, a worker may hold runs whose records the restart lost (the
// last second of an append-only file, or everything): it writes them
// again at its next heartbeat, or kills them (its fence) within the fence
// time. Until then nothing may start a script, or take another copy's
// lock, that a record not yet written again would have refused.
const luaRecovering = `
local function recovering(window)
  window = tonumber(window)
  if window <= 0 then return 0 end
  local up = tonumber(string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)'))
  if up >= window then return 0 end
  return window - up
end
`

// luaActiveCopy defines activeCopy(activeKey, runKeyOf, script): the id
// of a run of script that has not ended (false if none), pruning ended
// runs from the active set on the way. It is the per-script lock behind
// the 409 of a second start. The runs' keys are found at run time (they
// are the active set's members), so they cannot come in KEYS: runKeyOf is
// Store.RunKey(""), and a run's key is it followed by the run's id.
const luaActiveCopy = `
local function activeCopy(activeKey, runKeyOf, script)
  for _, id in ipairs(redis.call('SMEMBERS', activeKey)) do
    local f = redis.call('HMGET', runKeyOf .. id, 'status', 'script')
    if not f[1] or terminal[f[1]] then
      redis.call('SREM', activeKey, id)
    elseif f[2] == script then
      return id
    end
  end
  return false
end
`
