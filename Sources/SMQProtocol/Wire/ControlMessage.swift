/// An SMQ/1 message other than a fragment, as an owned value to encode (and, for tests and logs,
/// to compare with what was parsed).
///
/// Encode into a caller's buffer with ``write(into:)`` (sized by ``encodedSize``), or into a new
/// array with ``encoded()``. Reasons longer than 1 KiB are cut on a UTF-8 boundary
/// (``Reason/truncated(_:)``). Fragment messages are encoded with ``Fragment``.
public enum ControlMessage: Hashable, Sendable {
    /// CANCEL: end the job.
    case cancel(jobID: JobID)
    /// PING: client liveness.
    case ping
    /// PONG: the broker's answer.
    case pong
    /// FAILED: the job failed because of fragment `index`, or as a whole with
    /// ``Message/wholeJobIndex``.
    case failed(jobID: JobID, index: UInt32, code: FailureCode, reason: String)
    /// BUSY: resend fragment `index` after the delay.
    case busy(jobID: JobID, index: UInt32, retryAfterMilliseconds: UInt32)
    /// READY: a worker joins a service.
    case ready(credit: UInt32, heartbeatMilliseconds: UInt32, service: ServiceName)
    /// REJECT: a worker could not process a delivery.
    case reject(deliveryID: UInt64, code: FailureCode, retryable: Bool, reason: String)
    /// HEARTBEAT: liveness between broker and worker.
    case heartbeat
    /// DISCONNECT: the sender is leaving or the peer must leave.
    case disconnect(reason: String)
    /// CREDIT: a worker raises its credit.
    case credit(UInt32)
    /// DEADLINE (C45): the time left for the delivery whose WORK follows.
    case deadline(deliveryID: UInt64, timeLeftMilliseconds: UInt32)

    /// The message's command.
    public var command: Command {
        switch self {
        case .cancel: .cancel
        case .ping: .ping
        case .pong: .pong
        case .failed: .failed
        case .busy: .busy
        case .ready: .ready
        case .reject: .reject
        case .heartbeat: .heartbeat
        case .disconnect: .disconnect
        case .credit: .credit
        case .deadline: .deadline
        }
    }

    /// The number of bytes ``write(into:)`` writes.
    public var encodedSize: Int {
        switch self {
        case .ping, .pong, .heartbeat: 5
        case .cancel: 21
        case .failed(_, _, _, let reason): 27 + Reason.encodedByteCount(of: reason)
        case .busy: 29
        case .ready(_, _, let service): 14 + service.byteCount
        case .reject(_, _, _, let reason): 16 + Reason.encodedByteCount(of: reason)
        case .disconnect(let reason): 5 + Reason.encodedByteCount(of: reason)
        case .credit: 9
        case .deadline: 17
        }
    }

    /// Writes the message at the start of `buffer`.
    ///
    /// - Parameter buffer: The destination, at least ``encodedSize`` bytes.
    /// - Returns: The number of bytes written (``encodedSize``).
    @discardableResult
    public func write(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let size = encodedSize
        precondition(buffer.count >= size, "buffer too small for \(command)")
        Message.writeEnvelope(command, to: buffer)
        switch self {
        case .ping, .pong, .heartbeat:
            break
        case .cancel(let jobID):
            jobID.write(to: buffer, at: 5)
        case .failed(let jobID, let index, let code, let reason):
            jobID.write(to: buffer, at: 5)
            buffer.storeBigEndian(index, at: 21)
            buffer.storeBigEndian(code.rawValue, at: 25)
            _ = Reason.write(reason, to: buffer, at: 27)
        case .busy(let jobID, let index, let retryAfter):
            jobID.write(to: buffer, at: 5)
            buffer.storeBigEndian(index, at: 21)
            buffer.storeBigEndian(retryAfter, at: 25)
        case .ready(let credit, let heartbeat, let service):
            buffer.storeBigEndian(credit, at: 5)
            buffer.storeBigEndian(heartbeat, at: 9)
            service.write(to: buffer, at: Fragment.serviceOffset)
        case .reject(let deliveryID, let code, let retryable, let reason):
            buffer.storeBigEndian(deliveryID, at: 5)
            buffer.storeBigEndian(code.rawValue, at: 13)
            buffer[15] = retryable ? 1 : 0
            _ = Reason.write(reason, to: buffer, at: 16)
        case .disconnect(let reason):
            _ = Reason.write(reason, to: buffer, at: 5)
        case .credit(let credit):
            buffer.storeBigEndian(credit, at: 5)
        case .deadline(let deliveryID, let timeLeft):
            buffer.storeBigEndian(deliveryID, at: 5)
            buffer.storeBigEndian(timeLeft, at: 13)
        }
        return size
    }

    /// Encodes the message into a new array.
    ///
    /// - Returns: The message's bytes.
    public func encoded() -> [UInt8] {
        let size = encodedSize
        return [UInt8](unsafeUninitializedCapacity: size) { storage, initialized in
            initialized = write(into: UnsafeMutableRawBufferPointer(storage))
        }
    }

    /// Copies a parsed message into an owned value (allocates for reasons and services).
    ///
    /// - Parameter message: A parsed message.
    /// - Returns: nil for the fragment commands, which have no `ControlMessage` form.
    public init?(_ message: Message) {
        switch message {
        case .submit, .result, .work, .done: return nil
        case .cancel(let jobID): self = .cancel(jobID: jobID)
        case .ping: self = .ping
        case .pong: self = .pong
        case .failed(let jobID, let index, let code, let reason):
            self = .failed(jobID: jobID, index: index, code: code, reason: reason.string)
        case .busy(let jobID, let index, let retryAfter):
            self = .busy(jobID: jobID, index: index, retryAfterMilliseconds: retryAfter)
        case .ready(let credit, let heartbeat, let service):
            self = .ready(credit: credit, heartbeatMilliseconds: heartbeat, service: service.name)
        case .reject(let deliveryID, let code, let retryable, let reason):
            self = .reject(deliveryID: deliveryID, code: code, retryable: retryable, reason: reason.string)
        case .heartbeat: self = .heartbeat
        case .disconnect(let reason): self = .disconnect(reason: reason.string)
        case .credit(let credit): self = .credit(credit)
        case .deadline(let deliveryID, let timeLeft): self = .deadline(deliveryID: deliveryID, timeLeftMilliseconds: timeLeft)
        }
    }
}
