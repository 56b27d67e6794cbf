internal import CZeroMQ
import Logging
import Synchronization

/// The library's ZAP handler (RFC 27): the only thing that decides who may complete a CURVE
/// handshake with a SecureMQ server socket.
///
/// One per ``SecureContext``, bound at `inproc://zeromq.zap.01` before any server socket binds
/// (server sockets also set `ZMQ_ZAP_ENFORCE_DOMAIN`, so without this handler they refuse every
/// key rather than admit it). It decides from the 32-byte key frame only — never the identity
/// frame, which is the *server* socket's routing id — with one hash lookup in the allowlist of the
/// request's domain, so it never blocks a handshake. It answers `200` with `User-Id` = the key's
/// Z85 text and the allowlist entry's *policy* metadata only (``policyProperties``), `400` for
/// everything else. Admissions are logged; refusals are logged through a ``LogRateLimiter``
/// per (domain, reason, address), with the count left out, so a flood of handshakes cannot
/// flood the log.
final class ZAPHandler: @unchecked Sendable {
    // @unchecked: `domains`, `counters` and `refusalLog` are behind Mutexes; the socket is
    // confined to `thread`.
    static let endpoint = "inproc://zeromq.zap.01"

    /// The certificate metadata passed on to libzmq as ZMTP properties: the policy a server may
    /// want to read, nothing else. Above all never `Identity` (libzmq would make it the peer's
    /// routing id, letting a peer choose its own) nor `User-Id`, `Socket-Type` or anything a
    /// certificate author invents.
    static let policyProperties: Set<String> = ["role", "weight", "services", "name"]

    /// How long one refusal log line stands for the refusals like it (per domain, reason and
    /// address), and how many such keys are remembered at most.
    static let refusalLogInterval: Duration = .seconds(10)
    static let refusalLogKeys = 256

    struct Policy {
        let allowlist: Allowlist
        let logger: Logger
    }

    struct Counters: Sendable {
        var allowed = 0
        var denied = 0
        /// Of `denied`: refused for a mechanism other than CURVE (the rest: a key not on the allowlist).
        var deniedNotCurve = 0
        var malformed = 0
    }

    /// Why a handshake was refused: the kind a log line is rate-limited by.
    enum Refusal: String, Hashable, Sendable {
        case unknownKey = "key not on the allowlist"
        case notCurve = "mechanism is not CURVE"
        case unknownDomain = "unknown ZAP domain"
        case malformed = "malformed ZAP request"
    }

    /// What one refusal line is about. The address is the peer's IP (libzmq passes no port), so
    /// a flood from one host is one key whatever keys it tries.
    struct RefusalKey: Hashable, Sendable {
        let domain: String
        let kind: Refusal
        let address: String
    }

    private let thread: SocketThread
    private let domains = Mutex<[String: Policy]>([:])
    private let counters = Mutex(Counters())
    private let refusalLog: Mutex<LogRateLimiter<RefusalKey>>
    private let logger: Logger
    private var socket: ZMQSocket?

    /// - Parameters:
    ///   - summaryTimer: whether the handler's thread writes the summaries of left-out refusals
    ///     itself, once per interval (tests drive ``logSuppressedRefusals(now:)`` by hand).
    init(context: UnsafeMutableRawPointer, logger: Logger, refusalLogInterval: Duration = ZAPHandler.refusalLogInterval,
         refusalLogKeys: Int = ZAPHandler.refusalLogKeys, summaryTimer: Bool = true) throws(SecureMQError) {
        self.logger = logger
        refusalLog = Mutex(LogRateLimiter(interval: refusalLogInterval.nanoseconds, maxKeys: refusalLogKeys))
        thread = try SocketThread(name: "securemq-zap")
        let thread = self.thread
        let contextAddress = UInt(bitPattern: context)
        let box = UncheckedBox(self)
        try thread.runAndWait { () throws(SecureMQError) in
            let handler = box.value
            let socket = try ZMQSocket(context: UnsafeMutableRawPointer(bitPattern: contextAddress)!, kind: .rep)
            try socket.set(ZMQ_LINGER, 0)
            try socket.bind(ZAPHandler.endpoint)
            handler.socket = socket
            _ = thread.register(socket, onReadable: { [unowned handler] in handler.drain() })
            // A flood that stops is still reported, with its count.
            if summaryTimer {
                _ = thread.schedule(after: refusalLogInterval, every: refusalLogInterval) { [unowned handler] in
                    handler.logSuppressedRefusals(now: SocketThread.now())
                }
            }
            thread.onStop { socket.close(linger: .zero) }
        }
    }

    func stop() {
        thread.shutdownAndWait()
    }

    var statistics: Counters { counters.withLock { $0 } }

    /// Adds a domain's policy. Throws if the domain is taken.
    func register(domain: String, allowlist: Allowlist, logger: Logger) throws(SecureMQError) {
        guard !domain.isEmpty else {
            // An empty domain would let libzmq skip ZAP altogether (ZEROMQ-NOTES).
            throw SecureMQError(.invalidConfiguration, "a ZAP domain must not be empty")
        }
        let taken = domains.withLock { table -> Bool in
            if table[domain] != nil { return true }
            table[domain] = Policy(allowlist: allowlist, logger: logger)
            return false
        }
        if taken { throw SecureMQError(.invalidConfiguration, "the ZAP domain '\(domain)' is already used by another server socket in this context") }
    }

    func unregister(domain: String) {
        _ = domains.withLock { $0.removeValue(forKey: domain) }
    }

    // MARK: owner thread

    private func drain() {
        guard let socket else { return }
        // The owner thread asks again while a message waits, but drain what is queued so a
        // burst of handshakes does not cost one pass each.
        while true {
            let received: (parts: [ZMQMessage], truncated: Bool)?
            do { received = try socket.receiveMultipart(maxParts: 8) } catch {
                logger.error("ZAP handler receive failed", metadata: ["error": "\(error)"])
                return
            }
            guard let (parts, truncated) = received else { return }
            let reply = decide(parts: parts, truncated: truncated)
            send(reply, on: socket)
        }
    }

    struct Reply {
        var requestID: [UInt8]
        var status: String
        var text: String
        var userID: String = ""
        var metadata: [UInt8] = []
    }

    /// The answer to one ZAP request, logged (refusals through the rate limiter).
    ///
    /// - Parameters:
    ///   - parts: The request's frames.
    ///   - truncated: Whether the request had more frames than were read.
    ///   - now: The time in nanoseconds (``SocketThread/now()``); tests pass their own.
    func decide(parts: [ZMQMessage], truncated: Bool, now: UInt64 = SocketThread.now()) -> Reply {
        let requestID = parts.count > 1 ? parts[1].array : []
        // Every frame is peer-influenced text (the address comes from the connection, the rest
        // from whoever wrote to the ZAP endpoint): escaped before it reaches a log line.
        let address = parts.count > 3 ? PeerText.escaped(parts[3].bytes) : ""
        func malformed(_ reason: String, domain: String = "", kind: Refusal = .malformed, status: String = "400") -> Reply {
            counters.withLock { $0.malformed += 1 }
            logRefusal(RefusalKey(domain: domain, kind: kind, address: address), now: now, to: logger,
                       metadata: ["status": "\(status)", "reason": "\(reason)", "address": "\(address)"])
            return Reply(requestID: requestID, status: status, text: kind.rawValue)
        }
        guard parts.count >= 6, !truncated else { return malformed("malformed ZAP request: \(parts.count) frames") }
        guard parts[0].bytes.elementsEqual("1.0".utf8) else { return malformed("unsupported ZAP version") }
        let domain = String(decoding: parts[2].bytes, as: UTF8.self)
        guard let policy = domains.withLock({ $0[domain] }) else {
            // A domain is registered before its socket binds and removed when the socket closes,
            // but libzmq finishes the close on its I/O thread: a peer reconnecting to a server
            // that is shutting down (a broker restarting on its port) can still reach this. That
            // is no verdict on its key, so the answer is 500, "internal error", which SecureMQ's
            // clients and workers ask again (a bounded number of times); 400 made them give that
            // broker up for good. Not 300 ("temporary"): libzmq answers that by leaving the peer
            // hanging until its handshake timeout, with no error (PROTOCOL.md C68).
            let shown = PeerText.escaped(domain)
            return malformed("unknown ZAP domain '\(shown)'", domain: shown, kind: .unknownDomain, status: "500")
        }
        guard parts[5].bytes.elementsEqual("CURVE".utf8) else {
            counters.withLock { $0.denied += 1; $0.deniedNotCurve += 1 }
            logRefusal(RefusalKey(domain: domain, kind: .notCurve, address: address), now: now, to: policy.logger, metadata: [
                "address": "\(address)", "reason": "mechanism \(PeerText.escaped(parts[5].bytes)) is not CURVE",
            ])
            return Reply(requestID: requestID, status: "400", text: "only CURVE is accepted")
        }
        guard parts.count == 7, parts[6].count == PublicKey.byteCount, let key = try? PublicKey(bytes: parts[6].bytes) else {
            return malformed("CURVE credentials must be one 32-byte public key", domain: domain)
        }
        guard let entry = policy.allowlist.entry(for: key) else {
            counters.withLock { $0.denied += 1 }
            logRefusal(RefusalKey(domain: domain, kind: .unknownKey, address: address), now: now, to: policy.logger, metadata: [
                "key": "\(key.fingerprint)", "address": "\(address)", "reason": "\(Refusal.unknownKey.rawValue)",
            ])
            return Reply(requestID: requestID, status: "400", text: Refusal.unknownKey.rawValue)
        }
        counters.withLock { $0.allowed += 1 }
        policy.logger.info("peer admitted", metadata: [
            "key": "\(key.fingerprint)", "name": "\(PeerText.escaped(entry.name))", "address": "\(address)",
        ])
        return Reply(requestID: requestID, status: "200", text: "OK", userID: key.z85,
                     metadata: Self.encodeProperties(Self.policyPairs(of: entry)))
    }

    /// The entry's policy metadata (``policyProperties``), values escaped to one printable line.
    static func policyPairs(of entry: AllowlistEntry) -> [(name: String, value: String)] {
        entry.metadata.pairs.compactMap { pair in
            policyProperties.contains(pair.name) ? (pair.name, PeerText.escaped(pair.value)) : nil
        }
    }

    /// Writes a refusal line unless one like it was written within the interval; the line
    /// that is written says how many were left out since the last.
    private func logRefusal(_ key: RefusalKey, now: UInt64, to logger: Logger, metadata: Logger.Metadata) {
        let decision = refusalLog.withLock { $0.admit(key, now: now) }
        guard case .log(let suppressed) = decision else { return }
        var metadata = metadata
        if suppressed > 0 { metadata["suppressed"] = "\(suppressed)" }
        logger.warning(key.kind == .malformed || key.kind == .unknownDomain ? "ZAP request rejected" : "peer denied",
                       metadata: metadata)
    }

    /// One summary line for each kind of refusal whose lines were left out and whose interval
    /// has passed: the count, the reason and the address (or "other addresses" for the shared
    /// overflow entry when more keys than the limiter remembers were refused).
    func logSuppressedRefusals(now: UInt64) {
        let summaries = refusalLog.withLock { $0.takeSuppressed(now: now) }
        for (key, count) in summaries {
            guard let key else {
                logger.warning("refused handshakes not logged", metadata: ["suppressed": "\(count)", "address": "other addresses"])
                continue
            }
            let target = domains.withLock { $0[key.domain]?.logger } ?? logger
            target.warning("refused handshakes not logged", metadata: [
                "suppressed": "\(count)", "reason": "\(key.kind.rawValue)", "address": "\(key.address)",
            ])
        }
    }

    /// ZMTP property format: name length (1 byte), name, value length (4 bytes, big-endian), value.
    static func encodeProperties(_ pairs: [(name: String, value: String)]) -> [UInt8] {
        var out: [UInt8] = []
        for (name, value) in pairs {
            let nameBytes = Array(name.utf8), valueBytes = Array(value.utf8)
            // Names are at most 255 bytes in ZMTP; the certificate parser already limits them.
            guard !nameBytes.isEmpty, nameBytes.count <= 255, valueBytes.count <= Int(UInt32.max) else { continue }
            out.append(UInt8(nameBytes.count))
            out.append(contentsOf: nameBytes)
            let length = UInt32(valueBytes.count)
            out.append(contentsOf: [UInt8(length >> 24), UInt8(truncatingIfNeeded: length >> 16),
                                    UInt8(truncatingIfNeeded: length >> 8), UInt8(truncatingIfNeeded: length)])
            out.append(contentsOf: valueBytes)
        }
        return out
    }

    private func send(_ reply: Reply, on socket: ZMQSocket) {
        let frames: [[UInt8]] = [Array("1.0".utf8), reply.requestID, Array(reply.status.utf8),
                                 Array(reply.text.utf8), Array(reply.userID.utf8), reply.metadata]
        do {
            for (index, frame) in frames.enumerated() {
                _ = try socket.send(frame, more: index < frames.count - 1)
            }
        } catch {
            logger.error("ZAP reply failed", metadata: ["error": "\(error)"])
        }
    }
}

/// Carries a value across a `@Sendable` boundary where the receiving side is the only user
/// (a thread hand-off). Use only where a comment says why that is safe.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
