internal import CZeroMQ
import Glibc
import Synchronization
import Dispatch

/// The one thread that owns a set of libzmq sockets.
///
/// libzmq sockets are not thread-safe, so every socket belongs to exactly one `SocketThread`,
/// which sleeps in `poll(2)` on its sockets' descriptors plus an `eventfd`. Other threads (and
/// async callers) never touch a socket: they put closures into a locked inbox with ``execute(_:)``
/// and write the eventfd to wake the poll. Results go back through continuations resumed from the thread.
///
/// It is also a `TaskExecutor`: a task that prefers it (`withTaskExecutorPreference`) runs its
/// nonisolated code on this thread, between polls. Such a task reaches its sockets directly (no
/// inbox, no eventfd) and is resumed here when its answer arrives, so a request costs no thread
/// hand-off at all, as in a C program that calls `zmq_send` and `zmq_recv` on its own thread.
///
/// `@unchecked Sendable`: the inbox and lifecycle flags are behind a `Mutex`; everything else is
/// confined to the owner thread (read and written only from closures that run on it).
final class SocketThread: TaskExecutor, @unchecked Sendable {
    typealias Work = @Sendable () -> Void

    struct TimerID: Hashable { let raw: Int }

    /// A socket and what to do when a message waits on it. Sends never wait: they are
    /// non-blocking, and a full queue is the caller's answer (resend later, or an error).
    final class Registration {
        let socket: ZMQSocket
        /// Polled only while true (a receiver that reads on demand turns it off).
        var wantsRead: Bool {
            didSet { if wantsRead { mayBeReadable = true } }
        }
        let onReadable: () -> Void
        var removed = false
        /// libzmq's descriptor for the socket (`ZMQ_FD`).
        let descriptor: Int32
        /// Ask `ZMQ_EVENTS` on the next pass: the descriptor fired, or the last answer was yes.
        var mayBeReadable = true
        var ready = false

        init(socket: ZMQSocket, wantsRead: Bool, onReadable: @escaping () -> Void) {
            self.socket = socket
            self.wantsRead = wantsRead
            self.onReadable = onReadable
            descriptor = socket.descriptor
        }
    }

    private struct Timer {
        let id: TimerID
        var deadline: UInt64
        let interval: UInt64?
        let body: () -> Void
    }

    private struct Shared {
        var inbox: [Work] = []
        /// Task jobs enqueued from other threads.
        var jobs: [UnownedJob] = []
        var stopRequested = false
        var exited = false
        var exitWaiters: [CheckedContinuation<Void, Never>] = []
        /// The owner thread is in (or about to enter) poll(2) with an empty inbox: work
        /// must wake it. A busy thread finds new work at the top of its loop, so a caller
        /// writes the eventfd only when it sleeps, and only once per sleep.
        var sleeping = false
        var woken = false

        /// Whether the caller that just queued something must write the eventfd: the thread
        /// sleeps and nobody has woken it yet.
        mutating func claimWake() -> Bool {
            guard sleeping && !woken else { return false }
            woken = true
            return true
        }
    }

    let name: String
    private let eventFD: Int32
    private let shared = Mutex(Shared())
    /// The owner thread's pthread_t, 0 until it runs: read without the lock on every call.
    private let owner = Atomic<UInt>(0)

    // Owner-thread state.
    private var registrations: [Registration] = []
    private var timers: [Timer] = []
    private var nextID = 1
    private var pollFDs: [pollfd] = []
    /// The registrations behind `pollFDs[1...]`.
    private var polled: [Registration] = []
    private var stopHooks: [() -> Void] = []
    private var drained: [Work] = []
    private var drainedJobs: [UnownedJob] = []
    /// Task jobs enqueued on the owner thread itself (a task resumed by a message): no lock.
    private var localJobs: [UnownedJob] = []
    private var runningJobs: [UnownedJob] = []
    private var firing = false
    private var cancelledWhileFiring: Set<TimerID> = []
    private let exitSemaphore = DispatchSemaphore(value: 0)

    init(name: String) throws(SecureMQError) {
        self.name = name
        let fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard fd >= 0 else { throw SecureMQError(.system, "eventfd failed (errno \(errno))", errno: errno, call: "eventfd") }
        eventFD = fd
        let box = Unmanaged.passRetained(self)
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { raw in
            let me = Unmanaged<SocketThread>.fromOpaque(raw!).takeRetainedValue()
            me.run()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            Glibc.close(fd)
            throw SecureMQError(.system, "pthread_create failed (\(rc))", errno: rc, call: "pthread_create")
        }
        // Detached: both the async and the blocking shutdown wait for the exit signal, not a join.
        pthread_detach(tid)
    }

    deinit {
        Glibc.close(eventFD)
    }

    /// True when called on this thread.
    var isCurrent: Bool {
        pthread_self() == owner.load(ordering: .acquiring)
    }

    /// Runs a task's job on this thread. Jobs that arrive after the thread has exited go to the
    /// global executor, so a task that prefers a stopped thread still finishes.
    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if isCurrent {
            localJobs.append(job)
            return
        }
        let (accepted, needsWake) = shared.withLock { state -> (Bool, Bool) in
            guard !state.exited else { return (false, false) }
            state.jobs.append(job)
            return (true, state.claimWake())
        }
        if needsWake { wake() }
        if !accepted { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
    }

    /// Runs the jobs queued on the owner thread so far (jobs they enqueue wait for the next pass,
    /// after a poll).
    private func runQueuedJobs() {
        swap(&localJobs, &runningJobs)
        let me = asUnownedTaskExecutor()
        for job in drainedJobs { job.runSynchronously(on: me) }
        drainedJobs.removeAll(keepingCapacity: true)
        for job in runningJobs { job.runSynchronously(on: me) }
        runningJobs.removeAll(keepingCapacity: true)
    }

    /// Runs `work` on the owner thread. Returns false if the thread has stopped (work not run).
    @discardableResult
    func execute(_ work: @escaping Work) -> Bool {
        let (accepted, needsWake) = shared.withLock { state -> (Bool, Bool) in
            guard !state.stopRequested else { return (false, false) }
            state.inbox.append(work)
            return (true, state.claimWake())
        }
        if needsWake { wake() }
        return accepted
    }

    /// Runs `body` on the owner thread and returns its result to the async caller.
    func run<T: Sendable>(_ body: @escaping @Sendable () throws(SecureMQError) -> T) async throws(SecureMQError) -> T {
        // A task running on this executor is already on the owner thread.
        if isCurrent { return try body() }
        // Resumed exactly once: by the work, or here when the thread has stopped.
        let result: Result<T, SecureMQError> = await withUnsafeContinuation { continuation in
            let accepted = execute {
                do throws(SecureMQError) { continuation.resume(returning: .success(try body())) } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
            if !accepted { continuation.resume(returning: .failure(SecureMQError(.closed, "\(name) has stopped"))) }
        }
        return try result.get()
    }

    /// Runs `body` on the owner thread and blocks the caller until it is done (set-up paths only;
    /// never on the owner thread itself).
    func runAndWait<T>(_ body: @escaping () throws(SecureMQError) -> T) throws(SecureMQError) -> T {
        precondition(!isCurrent, "runAndWait would deadlock on the owner thread")
        let done = DispatchSemaphore(value: 0)
        let slot = UncheckedBox(ResultSlot<T>())
        let work = UncheckedBox(body)
        let accepted = execute {
            do throws(SecureMQError) { slot.value.result = .success(try work.value()) } catch {
                slot.value.result = .failure(error)
            }
            done.signal()
        }
        guard accepted else { throw SecureMQError(.closed, "\(name) has stopped") }
        done.wait()
        return try slot.value.result!.get()
    }

    private func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(eventFD, &one, 8)
    }

    // MARK: owner-thread API

    func register(_ socket: ZMQSocket, read: Bool = true, onReadable: @escaping () -> Void) -> Registration {
        precondition(isCurrent, "register on the owner thread")
        let registration = Registration(socket: socket, wantsRead: read, onReadable: onReadable)
        registrations.append(registration)
        return registration
    }

    func unregister(_ registration: Registration) {
        registration.removed = true
    }

    /// Runs `body` after `delay`, and then every `interval` if given.
    @discardableResult
    func schedule(after delay: Duration, every interval: Duration? = nil, _ body: @escaping () -> Void) -> TimerID {
        precondition(isCurrent, "schedule on the owner thread")
        let id = TimerID(raw: nextID)
        nextID += 1
        timers.append(Timer(id: id, deadline: Self.now() &+ delay.nanoseconds, interval: interval?.nanoseconds, body: body))
        return id
    }

    func cancel(_ timer: TimerID) {
        timers.removeAll { $0.id == timer }
        if firing { cancelledWhileFiring.insert(timer) }
    }

    /// Called on the owner thread when it stops, before it exits: close sockets here.
    func onStop(_ hook: @escaping () -> Void) {
        stopHooks.append(hook)
    }

    /// Asks the thread to stop: pending inbox work still runs, then the stop hooks, then it exits.
    func requestStop() {
        let first = shared.withLock { state -> Bool in
            defer { state.stopRequested = true }
            return !state.stopRequested
        }
        if first { wake() }
    }

    /// Stops the thread and waits until it has closed its sockets and exited.
    func shutdown() async {
        requestStop()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = shared.withLock { state -> Bool in
                if state.exited { return true }
                state.exitWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Blocking variant for synchronous teardown (never call it on the owner thread).
    func shutdownAndWait() {
        precondition(!isCurrent, "a SocketThread cannot wait for itself")
        requestStop()
        let already = shared.withLock { $0.exited }
        if !already { exitSemaphore.wait(); exitSemaphore.signal() }
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    // MARK: the loop

    private func run() {
        owner.store(pthread_self(), ordering: .releasing)
        // Named for ps, perf and gdb (Linux keeps 15 bytes).
        smq_name_this_thread(name)
        while true {
            // Swap the inbox with the drained arrays: they keep their capacity, so a busy loop
            // allocates nothing here.
            let stop = shared.withLock { state -> Bool in
                swap(&state.inbox, &drained)
                swap(&state.jobs, &drainedJobs)
                return state.stopRequested
            }
            for item in drained { item() }
            drained.removeAll(keepingCapacity: true)
            runQueuedJobs()
            if stop { break }
            pollOnce()
        }
        // Late work that raced with the stop request still runs (it may resume continuations),
        // then the stop hooks; tasks resumed by them run here until none is left.
        let late = shared.withLock { state -> [Work] in
            let work = state.inbox
            state.inbox.removeAll()
            return work
        }
        for item in late { item() }
        for hook in stopHooks { hook() }
        stopHooks.removeAll()
        registrations.removeAll()
        timers.removeAll()
        // (The inbox stays empty from here: execute refuses work once a stop is requested.)
        var waiters: [CheckedContinuation<Void, Never>] = []
        while true {
            let done = shared.withLock { state -> Bool in
                swap(&state.jobs, &drainedJobs)
                guard drainedJobs.isEmpty, localJobs.isEmpty else { return false }
                state.exited = true
                waiters = state.exitWaiters
                state.exitWaiters.removeAll()
                return true
            }
            if done { break }
            runQueuedJobs()
        }
        // From here on this is no longer the owner: a task resumed below is enqueued globally.
        owner.store(0, ordering: .releasing)
        exitSemaphore.signal()
        for waiter in waiters { waiter.resume() }
    }

    /// One pass: handle the sockets that have a message, or else sleep in `poll(2)` on the
    /// eventfd and the sockets' descriptors until one fires, work arrives or a timer is due.
    ///
    /// Not `zmq_poll`: it makes a zero-timeout `poll` before every blocking one and asks
    /// `ZMQ_EVENTS` (a system call each) of every socket on every pass, about ten system calls
    /// per message on a worker. Here `ZMQ_EVENTS` is asked only of sockets that were used or
    /// whose descriptor fired, which is what libzmq's edge-triggered `ZMQ_FD` requires.
    private func pollOnce() {
        if registrations.contains(where: { $0.removed }) { registrations.removeAll { $0.removed } }
        if !serveReadySockets() {
            sleepInPoll()
            // What woke us is read before the timers run: a liveness check must see the messages
            // that waited (after a SIGSTOP, say), not time out over them.
            serveReadySockets()
        }
        fireTimers()
    }

    /// Asks `ZMQ_EVENTS` of each socket that was used or whose descriptor fired, and runs the
    /// handlers of those with a message. Returns whether any handler ran.
    @discardableResult
    private func serveReadySockets() -> Bool {
        var anyReady = false
        for registration in registrations where registration.wantsRead {
            guard registration.mayBeReadable || registration.socket.touched else { continue }
            registration.mayBeReadable = false
            if registration.socket.hasMessage {
                registration.ready = true
                anyReady = true
            }
        }
        guard anyReady else { return false }
        // Handlers may register or unregister: walk a snapshot.
        polled.removeAll(keepingCapacity: true)
        polled.append(contentsOf: registrations)
        for registration in polled where registration.ready {
            registration.ready = false
            guard !registration.removed, registration.wantsRead else { continue }
            // Asked again next pass: the handler may have left messages waiting.
            registration.mayBeReadable = true
            registration.onReadable()
        }
        polled.removeAll(keepingCapacity: true)
        return true
    }

    /// Sleeps in `poll(2)` on the eventfd and the descriptors of the sockets that want reads,
    /// until one fires, work arrives or the next timer is due (not at all if work waits).
    private func sleepInPoll() {
        pollFDs.removeAll(keepingCapacity: true)
        polled.removeAll(keepingCapacity: true)
        pollFDs.append(pollfd(fd: eventFD, events: Int16(POLLIN), revents: 0))
        for registration in registrations where registration.wantsRead && registration.descriptor >= 0 && registration.socket.isOpen {
            pollFDs.append(pollfd(fd: registration.descriptor, events: Int16(POLLIN), revents: 0))
            polled.append(registration)
        }
        var timeout: Int32 = -1
        if let next = timers.min(by: { $0.deadline < $1.deadline })?.deadline {
            let now = Self.now()
            timeout = next <= now ? 0 : Int32(clamping: (next - now + 999_999) / 1_000_000)
        }
        // Sleep only with nothing to run; from here on, new work writes the eventfd.
        let mayBlock = localJobs.isEmpty && shared.withLock { state -> Bool in
            guard state.inbox.isEmpty, state.jobs.isEmpty, !state.stopRequested else { return false }
            state.sleeping = true
            return true
        }
        if !mayBlock { timeout = 0 }
        let count = pollFDs.count
        let rc = pollFDs.withUnsafeMutableBufferPointer { fds in
            Glibc.poll(fds.baseAddress, nfds_t(count), timeout)
        }
        if mayBlock {
            shared.withLock { state in
                state.sleeping = false
                state.woken = false
            }
        }
        if rc > 0 {
            if pollFDs[0].revents != 0 {
                var value: UInt64 = 0
                _ = Glibc.read(eventFD, &value, 8)
            }
            for (index, registration) in polled.enumerated() where pollFDs[index + 1].revents != 0 {
                registration.mayBeReadable = true
            }
        }
        polled.removeAll(keepingCapacity: true)
    }

    private func fireTimers() {
        guard !timers.isEmpty else { return }
        let now = Self.now()
        var due: [Timer] = []
        for index in timers.indices where timers[index].deadline <= now {
            due.append(timers[index])
            if let interval = timers[index].interval {
                timers[index].deadline = max(timers[index].deadline &+ interval, now)
            }
        }
        guard !due.isEmpty else { return }
        let oneShots = Set(due.filter { $0.interval == nil }.map(\.id))
        timers.removeAll { oneShots.contains($0.id) }
        cancelledWhileFiring.removeAll()
        firing = true
        defer { firing = false }
        for timer in due where !cancelledWhileFiring.contains(timer.id) { timer.body() }
    }
}

extension Duration {
    var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        return UInt64(max(0, seconds)) &* 1_000_000_000 &+ UInt64(max(0, attoseconds) / 1_000_000_000)
    }

    var milliseconds: Int32 {
        Int32(clamping: nanoseconds / 1_000_000)
    }
}

/// Written by the owner thread, read by the waiting caller after a semaphore: happens-before holds.
final class ResultSlot<T> {
    var result: Result<T, SecureMQError>?
}
