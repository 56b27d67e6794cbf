/// Why splitting a payload into fragments, or gathering results back, failed.
///
/// Every such failure ends the job: a fragmenter never produces a short job, and a gatherer never
/// hands over a silently short result.
public struct PipelineError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong: an open set a program can switch on.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// A stable identifier.
        public let name: String

        init(_ name: String) {
            self.name = name
        }

        public var description: String { name }

        // Fragmenter and payload files.

        /// The fragment size is below 1 byte or above max-fragment.
        public static let invalidFragmentSize = Code("invalidFragmentSize")
        /// The payload would need more than 2^32 − 1 fragments: choose larger fragments.
        public static let tooManyFragments = Code("tooManyFragments")
        /// The bytes given are not the length the fragmenter was made for.
        public static let payloadLengthMismatch = Code("payloadLengthMismatch")
        /// Every fragment of the job has already been produced.
        public static let alreadyFinished = Code("alreadyFinished")
        /// The source ended before the length it had when the job started (the file shrank).
        public static let sourceShrank = Code("sourceShrank")
        /// The source has more bytes than when the job started (the file grew).
        public static let sourceGrew = Code("sourceGrew")
        /// The payload file could not be opened.
        public static let openFailed = Code("openFailed")
        /// The payload is not a regular file, so its length is unknown upfront.
        public static let notRegularFile = Code("notRegularFile")
        /// Reading the payload failed.
        public static let readFailed = Code("readFailed")

        // Gatherer.

        /// A result belongs to another job.
        public static let jobMismatch = Code("jobMismatch")
        /// A result's count differs from the job's.
        public static let countMismatch = Code("countMismatch")
        /// A result's index is not below the job's count.
        public static let indexOutOfRange = Code("indexOutOfRange")
        /// A result came for an index at or beyond `nextIndex + window`: the peer broke the
        /// window contract.
        public static let windowExceeded = Code("windowExceeded")
        /// A result's body is not as long as its header says.
        public static let lengthMismatch = Code("lengthMismatch")
        /// A result's body does not hash to the digest in its header.
        public static let digestMismatch = Code("digestMismatch")
        /// The job was finished before every result arrived.
        public static let incomplete = Code("incomplete")
    }

    /// What went wrong.
    public var code: Code
    /// The fragment index concerned, when there is one.
    public var index: UInt32?
    /// The expected value (a length, a count, a bound), when there is one.
    public var expected: UInt64?
    /// The value found, when there is one.
    public var actual: UInt64?
    /// The `errno` of a failed system call.
    public var errno: Int32?
    /// A path, for file errors.
    public var path: String?

    /// Makes an error.
    ///
    /// - Parameters:
    ///   - code: What went wrong.
    ///   - index: The fragment index concerned.
    ///   - expected: The expected value.
    ///   - actual: The value found.
    ///   - errno: The `errno` of a failed system call.
    ///   - path: The file concerned.
    public init(
        _ code: Code, index: UInt32? = nil, expected: UInt64? = nil, actual: UInt64? = nil, errno: Int32? = nil,
        path: String? = nil
    ) {
        self.code = code
        self.index = index
        self.expected = expected
        self.actual = actual
        self.errno = errno
        self.path = path
    }

    /// What happened and what to do, for a person.
    public var description: String {
        let e = expected.map(String.init) ?? "?"
        let a = actual.map(String.init) ?? "?"
        let at = index.map { " at fragment \($0)" } ?? ""
        let file = path.map { " '\($0)'" } ?? ""
        let err = errno.map { " (errno \($0))" } ?? ""
        switch code {
        case .invalidFragmentSize: return "fragment size \(a) must be between 1 and max-fragment \(e)"
        case .tooManyFragments: return "payload needs \(a) fragments, at most \(e): use larger fragments"
        case .payloadLengthMismatch: return "payload is \(a) bytes, the job was made for \(e)"
        case .alreadyFinished: return "every fragment of the job has been produced"
        case .sourceShrank: return "payload\(file) ended after \(a) bytes, expected \(e)\(at): it changed while read"
        case .sourceGrew: return "payload\(file) is longer than the \(e) bytes it had when the job started: it changed while read"
        case .openFailed: return "cannot open payload\(file)\(err)"
        case .notRegularFile:
            return "payload\(file) is not a regular file, so its length is unknown: spool it to a file first"
        case .readFailed: return "reading payload\(file) failed\(at)\(err)"
        case .jobMismatch: return "result\(at) belongs to another job"
        case .countMismatch: return "result\(at) says the job has \(a) fragments, it has \(e)"
        case .indexOutOfRange: return "result index \(a) is not below the job's count \(e)"
        case .windowExceeded: return "result\(at) is beyond the window (next \(e)): the peer broke the window contract"
        case .lengthMismatch: return "result\(at) has \(a) body bytes, its header says \(e)"
        case .digestMismatch: return "result\(at) does not match its SHA-256 digest: corrupted in transit or by the worker"
        case .incomplete: return "job finished with result\(at) missing (\(a) of \(e) results)"
        default: return code.name
        }
    }
}
