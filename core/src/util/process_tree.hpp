#pragma once
// Ends what a process started: its descendants (as a child subreaper, see become_subreaper), or a
// process group, killed with SIGKILL and waited for until none of them runs any more code.
//
// Thread-safety: free functions, safe to call from any thread; kill_descendants kills the
// children of every thread of this process, including those another thread is about to wait for
// (call it where every child of this process is meant to die: an inspection child, a handler
// process). Linux only (prctl, /proc).

#include <sys/types.h>

#include <chrono>
#include <vector>

namespace flowreg::detail {

// Makes this process a child subreaper (PR_SET_CHILD_SUBREAPER): descendants orphaned by their
// parent's death become its children, so they can be found and reaped. A process that left this
// process's group and session (setsid, a daemon's double fork) is still found this way. False when
// the kernel refused (errno set).
bool become_subreaper() noexcept;

// This process's child pids (/proc/self/task/*/children, every thread; zombies included). Where
// the kernel has no `children` file (CONFIG_PROC_CHILDREN off), /proc/<pid>/stat is read instead.
std::vector<pid_t> child_pids();

// SIGKILLs every descendant of this process (children, then the orphans that reparent to it as a
// subreaper, until none is left or `deadline` passes), reaping each; returns how many were killed
// (zombies that had already ended are reaped, not counted). Never kills this process. Without
// become_subreaper, the grandchildren of a killed child go to init instead and are not found.
int kill_descendants(std::chrono::steady_clock::time_point deadline);

// SIGKILLs process group `pgid` and waits until no process of it runs any more (kill(-pgid, 0) ==
// ESRCH, polling with a short sleep, up to `deadline`; the members that are our children are
// reaped). A member left as a zombie whose parent is not this process (an orphan under an init
// that does not reap) runs no code and counts as gone. True when gone; false at the deadline, or
// for a pgid below 2 (never kill(-1) or kill(0)). A process that left the group (setsid, setpgid)
// is not a member: it is not killed. The caller reaps first the members whose exit status it
// wants (the leader).
bool kill_group_and_wait(pid_t pgid, std::chrono::steady_clock::time_point deadline);

}  // namespace flowreg::detail
