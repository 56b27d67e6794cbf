/// A received SMQ/1 message, parsed in place: fixed fields as values, the service, reason and
/// body as views into the caller's buffer.
///
/// Valid only while the buffer given to ``parse(_:limits:)`` is alive and unchanged.
public enum Message {
    /// A fragment of a job, client to broker.
    case submit(FragmentView)
    /// End a job, client to broker.
    case cancel(jobID: JobID)
    /// Client liveness.
    case ping
    /// The answer to a PING.
    case pong
    /// A fragment's result, broker to client.
    case result(FragmentView)
    /// A job failed because of fragment `index`, or as a whole when `index` is
    /// ``wholeJobIndex``.
    case failed(jobID: JobID, index: UInt32, code: FailureCode, reason: ReasonView)
    /// The broker's byte budget is full: resend fragment `index` after the delay.
    case busy(jobID: JobID, index: UInt32, retryAfterMilliseconds: UInt32)
    /// A worker joins `service`, able to hold `credit` fragments, heartbeating at the interval.
    case ready(credit: UInt32, heartbeatMilliseconds: UInt32, service: ServiceView)
    /// A fragment to process, broker to worker.
    case work(FragmentView)
    /// A worker's result, worker to broker.
    case done(FragmentView)
    /// A worker could not process delivery `deliveryID`.
    case reject(deliveryID: UInt64, code: FailureCode, retryable: Bool, reason: ReasonView)
    /// Liveness between broker and worker.
    case heartbeat
    /// The sender is leaving or the peer must leave.
    case disconnect(reason: ReasonView)
    /// A worker raises its credit.
    case credit(UInt32)
    /// DEADLINE (C45): the delivery whose WORK follows must be done within this many
    /// milliseconds (measured when the broker sent it).
    case deadline(deliveryID: UInt64, timeLeftMilliseconds: UInt32)

    /// The `index` of a FAILED that fails the whole job rather than one fragment.
    public static let wholeJobIndex: UInt32 = 0xFFFF_FFFF

    /// The first five bytes of every message: signature, version, command.
    public static let envelopeSize = 5

    /// The message's command.
    public var command: Command {
        switch self {
        case .submit: .submit
        case .cancel: .cancel
        case .ping: .ping
        case .pong: .pong
        case .result: .result
        case .failed: .failed
        case .busy: .busy
        case .ready: .ready
        case .work: .work
        case .done: .done
        case .reject: .reject
        case .heartbeat: .heartbeat
        case .disconnect: .disconnect
        case .credit: .credit
        case .deadline: .deadline
        }
    }

    /// The fragment of a SUBMIT, WORK, DONE or RESULT; nil for the other commands.
    public var fragment: FragmentView? {
        switch self {
        case .submit(let view), .result(let view), .work(let view), .done(let view): view
        default: nil
        }
    }

    /// Whether `bytes` starts with the SMQ/1 signature `SMQ`: how a receiver tells an SMQ/1 frame
    /// from a 7/MDP one, and rejects a multipart message whose first frame starts with `SMQ`.
    ///
    /// - Parameter bytes: A received frame.
    /// - Returns: true when its first three bytes are `SMQ`.
    public static func hasSignature(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 3 && bytes[0] == 0x53 && bytes[1] == 0x4D && bytes[2] == 0x51
    }

    static func writeEnvelope(_ command: Command, to buffer: UnsafeMutableRawBufferPointer) {
        buffer[0] = 0x53  // S
        buffer[1] = 0x4D  // M
        buffer[2] = 0x51  // Q
        buffer[3] = SMQProtocolVersion.current
        buffer[4] = command.rawValue
    }
}
