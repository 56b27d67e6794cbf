import Synchronization

/// Async callers waiting on a ``SocketThread`` for something only that thread can produce (a
/// message, a connection). Every waiter is resumed exactly once: with a value, an error, its
/// deadline or its task's cancellation. Confined to the owner thread.
final class Waiters<Value: Sendable> {
    /// Unsafe, not checked: every path above resumes a waiter exactly once (the tests hold it to
    /// that), and a checked continuation costs an allocation per wait on the request path.
    typealias Continuation = UnsafeContinuation<Result<Value, SecureMQError>, Never>

    private struct Waiter {
        let id: Int
        let continuation: Continuation
        let timer: SocketThread.TimerID?
    }

    private var queue: [Waiter] = []
    private var head = 0
    // A cancellation can overtake the registration it cancels (both travel through the inbox,
    // from different tasks): remember it so the registration resolves at once.
    private var cancelledEarly: Set<Int> = []
    private unowned let thread: SocketThread

    init(thread: SocketThread) {
        self.thread = thread
    }

    var isEmpty: Bool { head == queue.count }

    func add(id: Int, _ continuation: Continuation, timeout: Duration?, timeoutError: @escaping () -> SecureMQError) {
        if cancelledEarly.remove(id) != nil {
            continuation.resume(returning: .failure(SecureMQError(.cancelled, "the operation was cancelled")))
            return
        }
        var timer: SocketThread.TimerID?
        if let timeout {
            timer = thread.schedule(after: timeout) { [unowned self] in
                self.fail(id: id, timeoutError())
            }
        }
        queue.append(Waiter(id: id, continuation: continuation, timer: timer))
    }

    /// Resumes the oldest waiter with `value`. Returns false when nobody waits.
    @discardableResult
    func resumeFirst(_ value: Value) -> Bool {
        guard head < queue.count else { return false }
        let waiter = queue[head]
        head += 1
        compact()
        if let timer = waiter.timer { thread.cancel(timer) }
        waiter.continuation.resume(returning: .success(value))
        return true
    }

    func cancel(id: Int) {
        if !fail(id: id, SecureMQError(.cancelled, "the operation was cancelled")) { cancelledEarly.insert(id) }
    }

    @discardableResult
    func fail(id: Int, _ error: SecureMQError) -> Bool {
        guard let index = queue[head...].firstIndex(where: { $0.id == id }) else { return false }
        let waiter = queue.remove(at: index)
        if let timer = waiter.timer { thread.cancel(timer) }
        waiter.continuation.resume(returning: .failure(error))
        return true
    }

    func failAll(_ error: SecureMQError) {
        let waiting = queue[head...]
        queue.removeAll()
        head = 0
        for waiter in waiting {
            if let timer = waiter.timer { thread.cancel(timer) }
            waiter.continuation.resume(returning: .failure(error))
        }
    }

    private func compact() {
        if head > 64 && head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
    }
}

/// Ids for waiters, unique per process.
enum WaiterID {
    private static let counter = Atomic<Int>(0)
    static func next() -> Int { counter.add(1, ordering: .relaxed).newValue }
}

extension SocketThread {
    /// Suspends the caller until the owner thread resolves the waiter that `register` adds;
    /// cancellation of the calling task is delivered to the thread as `cancel(id)`.
    func wait<Value: Sendable>(
        register: @escaping @Sendable (Int, Waiters<Value>.Continuation) -> Void,
        cancel: @escaping @Sendable (Int) -> Void
    ) async throws(SecureMQError) -> Value {
        let id = WaiterID.next()
        let result: Result<Value, SecureMQError> = await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: Waiters<Value>.Continuation) in
                if Task.isCancelled {
                    continuation.resume(returning: .failure(SecureMQError(.cancelled, "the operation was cancelled")))
                    return
                }
                // A task on this executor registers directly; others go through the inbox.
                if isCurrent { return register(id, continuation) }
                let accepted = execute { register(id, continuation) }
                if !accepted { continuation.resume(returning: .failure(SecureMQError(.closed, "the connection is closed"))) }
            }
        } onCancel: {
            execute { cancel(id) }
        }
        return try result.get()
    }
}
