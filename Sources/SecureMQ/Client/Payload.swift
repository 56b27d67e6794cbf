/// What a client submits: bytes in memory, or a file read as a stream (never loaded whole).
public struct Payload: Sendable {
    enum Source: Sendable {
        case bytes([UInt8])
        case file(String)
    }

    let source: Source

    /// A payload in memory.
    public static func bytes(_ bytes: [UInt8]) -> Payload { Payload(source: .bytes(bytes)) }

    /// A file, read fragment by fragment as the window allows. Its size must not change while
    /// the job runs (a change fails the job; nothing is silently cut short).
    public static func file(_ path: String) -> Payload { Payload(source: .file(path)) }
}

/// One fragment's result, handed to the caller in index order.
public struct JobResult: Sendable {
    /// The fragment's index in the job.
    public let index: Int
    /// The worker's output for that fragment.
    public let body: [UInt8]
    /// The first 8 bytes of the worker's public key (its fingerprint is their Z85 text).
    public let workerTag: UInt64
}

/// What a finished job did.
public struct JobSummary: Sendable {
    public var fragments = 0
    public var payloadBytes = 0
    public var resultBytes = 0
    /// SHA-256 of the fragment digests of the payload sent, in index order.
    public var payloadDigest = ""
    /// SHA-256 of the result digests, in index order.
    public var resultDigest = ""
    /// Results per worker tag.
    public var perWorker: [UInt64: Int] = [:]
    /// Fragments resent because the broker was busy.
    public var busyResends = 0
    /// Fragments sent again after a reconnection.
    public var resubmitted = 0
    /// Duplicate results dropped (a retried fragment answered twice).
    public var duplicates = 0
    public var elapsed: Duration = .zero

    public init() {}
}
