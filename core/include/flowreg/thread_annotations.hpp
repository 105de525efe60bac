#pragma once
// Clang's -Wthread-safety annotations (no-ops with other compilers), and std::mutex /
// std::shared_mutex wrapped as capabilities (libstdc++'s are not annotated). The one place these
// are defined; a clang build (-Wthread-safety, see cmake/FlowregWarnings.cmake) checks them.

#include <mutex>
#include <shared_mutex>

#ifndef FLOWREG_THREAD_ANNOTATION
#if defined(__clang__)
#define FLOWREG_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define FLOWREG_THREAD_ANNOTATION(x)
#endif
#endif
#ifndef FLOWREG_CAPABILITY
#define FLOWREG_CAPABILITY(x) FLOWREG_THREAD_ANNOTATION(capability(x))
#endif
#ifndef FLOWREG_SCOPED_CAPABILITY
#define FLOWREG_SCOPED_CAPABILITY FLOWREG_THREAD_ANNOTATION(scoped_lockable)
#endif
#ifndef FLOWREG_GUARDED_BY
#define FLOWREG_GUARDED_BY(x) FLOWREG_THREAD_ANNOTATION(guarded_by(x))
#endif
#ifndef FLOWREG_ACQUIRE
#define FLOWREG_ACQUIRE(...) FLOWREG_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#endif
#ifndef FLOWREG_ACQUIRE_SHARED
#define FLOWREG_ACQUIRE_SHARED(...) \
  FLOWREG_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#endif
#ifndef FLOWREG_RELEASE
#define FLOWREG_RELEASE(...) FLOWREG_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#endif
#ifndef FLOWREG_REQUIRES
#define FLOWREG_REQUIRES(...) FLOWREG_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#endif
#ifndef FLOWREG_RELEASE_SHARED
#define FLOWREG_RELEASE_SHARED(...) \
  FLOWREG_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#endif

namespace flowreg::detail {

// std::mutex and std::shared_mutex as clang capabilities (libstdc++'s are not annotated).
class FLOWREG_CAPABILITY("mutex") AnnotatedMutex {
 public:
  void lock() FLOWREG_ACQUIRE() { mu_.lock(); }
  void unlock() FLOWREG_RELEASE() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

class FLOWREG_CAPABILITY("mutex") AnnotatedSharedMutex {
 public:
  void lock() FLOWREG_ACQUIRE() { mu_.lock(); }
  void unlock() FLOWREG_RELEASE() { mu_.unlock(); }
  void lock_shared() FLOWREG_ACQUIRE_SHARED() { mu_.lock_shared(); }
  void unlock_shared() FLOWREG_RELEASE_SHARED() { mu_.unlock_shared(); }

 private:
  std::shared_mutex mu_;
};

// Scoped, relockable: usable with std::condition_variable_any.
class FLOWREG_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(AnnotatedMutex& mu) FLOWREG_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() FLOWREG_RELEASE() {
    if (held_) mu_.unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void lock() FLOWREG_ACQUIRE() {
    mu_.lock();
    held_ = true;
  }
  void unlock() FLOWREG_RELEASE() {
    held_ = false;
    mu_.unlock();
  }

 private:
  AnnotatedMutex& mu_;
  bool held_ = true;
};

class FLOWREG_SCOPED_CAPABILITY WriterLock {
 public:
  explicit WriterLock(AnnotatedSharedMutex& mu) FLOWREG_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~WriterLock() FLOWREG_RELEASE() { mu_.unlock(); }
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

 private:
  AnnotatedSharedMutex& mu_;
};

class FLOWREG_SCOPED_CAPABILITY ReaderLock {
 public:
  explicit ReaderLock(AnnotatedSharedMutex& mu) FLOWREG_ACQUIRE_SHARED(mu) : mu_(mu) {
    mu_.lock_shared();
  }
  ~ReaderLock() FLOWREG_RELEASE() { mu_.unlock_shared(); }
  ReaderLock(const ReaderLock&) = delete;
  ReaderLock& operator=(const ReaderLock&) = delete;

 private:
  AnnotatedSharedMutex& mu_;
};

}  // namespace flowreg::detail
