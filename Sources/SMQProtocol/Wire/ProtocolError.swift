/// Why an SMQ/1 message was refused, and what the receiver must do about it (§2.3).
///
/// Two classes, told apart by ``failureCode``:
/// - **Unreadable** (``failureCode`` is nil): wrong signature or version, unknown command, an
///   envelope too short or too long for its command, a bad service name, an over-long reason.
///   The receiver drops the message and logs one line (peer fingerprint and ``description``).
/// - **A fragment that fails a check** of §2.2 while its job-id and index could be read
///   (``jobID`` and ``index`` are set): ``failureCode`` is ``FailureCode/malformed`` (`400`) or
///   ``FailureCode/tooLarge`` (`413`). For a SUBMIT the broker answers `FAILED` with that code for
///   ``jobID``/``index`` (ending the job); for a DONE it counts a failed attempt of the delivery
///   ``tag`` names; a worker REJECTs a bad WORK; a client fails the job of a bad RESULT.
///
/// Building one never allocates; ``description`` does, so call it only to log.
public struct ProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What was wrong: an open set a program can switch on.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// A stable identifier, also the start of the error's description.
        public let name: String

        /// Makes a code; only this module defines them.
        init(_ name: String) {
            self.name = name
        }

        public var description: String { name }

        // Unreadable envelopes (§2.3, first class): dropped.

        /// The message does not start with `SMQ`.
        public static let badSignature = Code("badSignature")
        /// The message's version byte is not 1.
        public static let unsupportedVersion = Code("unsupportedVersion")
        /// The command byte is not one SMQ/1 defines.
        public static let unknownCommand = Code("unknownCommand")
        /// The message ends before the fields its command needs.
        public static let truncated = Code("truncated")
        /// Bytes follow the last field of a command that has no body.
        public static let trailingBytes = Code("trailingBytes")
        /// A service name of length 0, or with a byte outside `[A-Za-z0-9._-]`.
        public static let badServiceName = Code("badServiceName")
        /// A reason longer than 1 KiB.
        public static let reasonTooLong = Code("reasonTooLong")
        /// A field holds a value its command does not allow (REJECT's retryable byte not 0 or 1).
        public static let badField = Code("badField")

        // Fragment header checks (§2.2): FAILED 400 or 413.

        /// The fragment header's version is not 1.
        public static let badHeaderVersion = Code("badHeaderVersion")
        /// A flags bit other than LAST is set.
        public static let badFlags = Code("badFlags")
        /// The header's reserved bytes are not zero.
        public static let reservedNotZero = Code("reservedNotZero")
        /// `index ≥ count` (which includes `count = 0`).
        public static let indexOutOfRange = Code("indexOutOfRange")
        /// LAST is set on a fragment that is not the last, or missing on the last.
        public static let lastFlagMismatch = Code("lastFlagMismatch")
        /// The header's `length` differs from the number of body bytes that follow it.
        public static let lengthMismatch = Code("lengthMismatch")
        /// The body is larger than max-fragment: `413`.
        public static let fragmentTooLarge = Code("fragmentTooLarge")
        /// In a request, `offset + length > total-length`.
        public static let offsetOutOfRange = Code("offsetOutOfRange")
        /// In a request, `total-length` above 2^63 − 1 (no receiver could address it) or above
        /// `count × max-fragment` (no fragments of this job could carry it).
        public static let totalLengthOutOfRange = Code("totalLengthOutOfRange")
        /// A fragment's body does not hash to its header's digest (checked by workers and clients,
        /// not by the broker).
        public static let digestMismatch = Code("digestMismatch")
        /// In a request, fragment 0 not at offset 0.
        public static let firstFragmentNotAtStart = Code("firstFragmentNotAtStart")
        /// In a request, the last fragment not ending at total-length.
        public static let lastFragmentNotAtEnd = Code("lastFragmentNotAtEnd")
    }

    /// What was wrong.
    public var code: Code
    /// The message's command, when the envelope was read that far.
    public var command: Command?
    /// The fragment's tag (the delivery id of a WORK or DONE), when it could be read.
    public var tag: UInt64?
    /// The fragment's job, when its header could be read.
    public var jobID: JobID?
    /// The fragment's index, when its header could be read.
    public var index: UInt32?
    /// The offending value (a length, a byte, a version), when there is one.
    public var value: UInt64?
    /// The bound `value` broke (max-fragment, total-length, the count), when there is one.
    public var limit: UInt64?
    /// The code to fail the fragment's job with, or nil when the message is unreadable and is
    /// only dropped and logged.
    public var failureCode: FailureCode?

    /// Makes an error.
    ///
    /// - Parameters:
    ///   - code: What was wrong.
    ///   - command: The message's command, if read.
    ///   - value: The offending value, if any.
    ///   - limit: The bound it broke, if any.
    public init(_ code: Code, command: Command? = nil, value: UInt64? = nil, limit: UInt64? = nil) {
        self.code = code
        self.command = command
        self.value = value
        self.limit = limit
    }

    /// Whether the message is dropped (and logged) rather than answered: §2.3's first class.
    public var isUnreadable: Bool { failureCode == nil }

    /// One line for a log: what was wrong, with the values involved.
    public var description: String {
        var text = code.name + ": " + summary
        if let command { text += " (command \(command))" }
        if let jobID { text += " (job \(jobID)" + (index.map { ", index \($0)" } ?? "") + ")" }
        if let failureCode { text += " -> FAILED \(failureCode)" }
        return text
    }

    private var summary: String {
        let v = value.map(String.init) ?? "?"
        let l = limit.map(String.init) ?? "?"
        switch code {
        case .badSignature: return "not an SMQ/1 message (no 'SMQ' signature)"
        case .unsupportedVersion: return "protocol version \(v), this peer speaks 1"
        case .unknownCommand: return "unknown command byte \(v)"
        case .truncated: return "message of \(v) bytes is too short for its command (needs \(l))"
        case .trailingBytes: return "message of \(v) bytes is longer than its command's \(l)"
        case .badServiceName: return "service name must be 1-255 bytes of [A-Za-z0-9._-]"
        case .reasonTooLong: return "reason of \(v) bytes exceeds \(l)"
        case .badField: return "field value \(v) not allowed"
        case .badHeaderVersion: return "fragment header version \(v), expected 1"
        case .badFlags: return "fragment flags \(v) set bits other than LAST"
        case .reservedNotZero: return "fragment header reserved bytes are \(v), must be 0"
        case .indexOutOfRange: return "fragment index \(v) is not below count \(l)"
        case .lastFlagMismatch: return "LAST flag must be set exactly on index count-1 (count \(l))"
        case .lengthMismatch: return "header length \(v) but \(l) body bytes follow"
        case .fragmentTooLarge: return "fragment body of \(v) bytes exceeds max-fragment \(l)"
        case .offsetOutOfRange: return "offset + length = \(v) exceeds total-length \(l)"
        case .totalLengthOutOfRange: return "total-length \(v) exceeds \(l), the most this job's fragments can carry"
        case .digestMismatch: return "the body does not match its SHA-256 digest"
        case .firstFragmentNotAtStart: return "fragment 0 must start at offset 0, not \(v)"
        case .lastFragmentNotAtEnd: return "the last fragment must end at total-length \(l), not at \(v)"
        default: return "protocol violation"
        }
    }
}
