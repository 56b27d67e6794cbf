/// The code of a FAILED (§3) or a REJECT (§4): HTTP-like, as MMI uses, two bytes big-endian.
///
/// An open set: a worker may REJECT with any code, and a client may meet codes from a newer broker.
public struct FailureCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The code on the wire.
    public var rawValue: UInt16

    /// Wraps a code.
    ///
    /// - Parameter rawValue: The two-byte code read from a FAILED or REJECT.
    public init(rawValue: UInt16) {
        self.rawValue = rawValue
    }

    /// `400`: a malformed fragment, or one that disagrees with its job.
    public static let malformed = FailureCode(rawValue: 400)
    /// `403`: the peer's role or its allowed services forbid it.
    public static let forbidden = FailureCode(rawValue: 403)
    /// `404`: no worker for the service within the service timeout.
    public static let noWorker = FailureCode(rawValue: 404)
    /// `408`: the job's deadline passed before this fragment was done (PROTOCOL.md C45): the
    /// broker dropped it instead of dispatching it, or the client gave up on it.
    public static let deadlineExceeded = FailureCode(rawValue: 408)
    /// `410`: the job was cancelled (or ended before this fragment came).
    public static let cancelled = FailureCode(rawValue: 410)
    /// `413`: a fragment body larger than max-fragment.
    public static let tooLarge = FailureCode(rawValue: 413)
    /// `500`: the broker failed internally.
    public static let internalError = FailureCode(rawValue: 500)
    /// `503`: the broker is draining.
    public static let draining = FailureCode(rawValue: 503)
    /// `504`: the fragment was charged max-deliveries times (a poison fragment).
    public static let retriesExhausted = FailureCode(rawValue: 504)
    /// `520`: a worker failed, with a code that is not its own `4xx`.
    public static let workerFailure = FailureCode(rawValue: 520)

    /// The name the protocol gives the code, or nil for a code it does not define.
    public var name: String? {
        switch rawValue {
        case 400: "malformed"
        case 403: "forbidden"
        case 404: "no worker"
        case 408: "deadline exceeded"
        case 410: "cancelled"
        case 413: "too large"
        case 500: "internal error"
        case 503: "draining"
        case 504: "retries exhausted"
        case 520: "worker failure"
        default: nil
        }
    }

    /// Whether the code is in `400...499`: the request's fault, so retrying it elsewhere is futile.
    public var isClientError: Bool { (400...499).contains(rawValue) }

    /// The code a client sees for a worker's REJECT code (§3): a worker's own `4xx` passes
    /// through, anything else becomes ``workerFailure``.
    ///
    /// - Parameter code: The code in the worker's REJECT.
    /// - Returns: The code for the FAILED the broker sends.
    public static func passedThrough(fromWorker code: FailureCode) -> FailureCode {
        code.isClientError ? code : .workerFailure
    }

    /// `"413 too large"`, or just the number for a code without a name.
    public var description: String {
        if let name { return "\(rawValue) \(name)" }
        return String(rawValue)
    }
}
