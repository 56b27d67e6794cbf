import Logging
import SMQProtocol

/// The kinds of log line a peer can cause, each rate-limited per key (PROTOCOL.md C41).
enum LogKind: UInt8 {
    case malformed, strayResult, mismatchedResult, cancel, jobFailed, revokedMessage, roleViolation
    case duplicateSubmit, userIDMismatch, workerGone, clientGone, peerJoined, peerLeft, busy, forbidden
    case tooManyConnections, unknownKey, workerReady
    case mdpNoReply
}

struct LogKey: Hashable {
    let key: Int
    let kind: LogKind
}

/// Log lines a flood cannot amplify: per key and kind at most one line per interval, and the next
/// line (or a summary at the next tick) says how many were left out. One ``LogRateLimiter`` for
/// every line a peer can trigger.
struct PeerLog {
    let logger: Logger
    private var limiter: LogRateLimiter<LogKey>

    init(logger: Logger, interval: UInt64) {
        self.logger = logger
        limiter = LogRateLimiter(interval: interval, maxKeys: 4096)
    }

    var suppressed: Int { limiter.totalSuppressed }

    /// Writes the line unless one of this kind about this key was written within the interval.
    /// The metadata is built only when the line is written.
    mutating func note(_ kind: LogKind, key: Int, level: Logger.Level, _ message: @autoclosure () -> Logger.Message,
                       now: UInt64, _ metadata: @autoclosure () -> Logger.Metadata = [:]) {
        guard logger.logLevel <= level else { return }
        switch limiter.admit(LogKey(key: key, kind: kind), now: now) {
        case .suppress:
            return
        case .log(let suppressed):
            var fields = metadata()
            if suppressed > 0 { fields["suppressed"] = "\(suppressed)" }
            logger.log(level: level, message(), metadata: fields)
        }
    }

    /// One summary line per key and kind whose flood stopped with lines left out.
    mutating func flush(now: UInt64) {
        for (key, count) in limiter.takeSuppressed(now: now) {
            logger.notice("log lines suppressed", metadata: [
                "kind": "\(key.map { "\($0.kind)" } ?? "other")", "keySerial": "\(key?.key ?? -1)", "suppressed": "\(count)",
            ])
        }
    }
}
