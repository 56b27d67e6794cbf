/// Decides which lines of a flood to write: per key, at most one line per interval, and the next
/// line written carries how many were left out since the last one.
///
/// A peer that sends a thousand bad messages a second must not make a thousand log lines a
/// second: that would let it fill the disk and drown what matters. Keys are chosen by the caller
/// (for example a peer's key and the kind of event). The table holds at most `maxKeys` keys; when
/// it is full and a new key arrives, keys whose interval has passed with nothing suppressed are
/// forgotten, and if none can be, the new key shares one overflow entry with every other such key,
/// so memory stays bounded whatever the peers do. Nothing here reads a clock: the caller passes
/// `now` (nanoseconds, any monotonic origin), so it is tested with a manual clock.
public struct LogRateLimiter<Key: Hashable> {
    /// What to do with one event.
    public enum Decision: Equatable, Sendable {
        /// Write the line; `suppressed` lines of this key were left out since the last one.
        case log(suppressed: Int)
        /// Leave the line out (it is counted).
        case suppress
    }

    private struct Entry {
        var lastLogged: UInt64
        var suppressed: Int
    }

    /// The shortest time between two lines of one key, in nanoseconds.
    public let interval: UInt64
    /// The most keys remembered at once.
    public let maxKeys: Int
    private var entries: [Key: Entry] = [:]
    private var overflow: Entry?
    /// Every event left out so far (all keys).
    public private(set) var totalSuppressed = 0

    /// - Parameters:
    ///   - interval: Nanoseconds between two lines of one key (default 10 s).
    ///   - maxKeys: The most keys remembered (default 1,024); at least 1.
    public init(interval: UInt64 = 10_000_000_000, maxKeys: Int = 1024) {
        self.interval = interval
        self.maxKeys = max(1, maxKeys)
    }

    /// The number of keys remembered now (never above ``maxKeys``).
    public var count: Int { entries.count }

    /// Whether to write the line for one event of `key` at `now`.
    ///
    /// - Parameters:
    ///   - key: What the line is about.
    ///   - now: The current time in nanoseconds.
    /// - Returns: ``Decision/log(suppressed:)`` with the count left out since the last line, or
    ///   ``Decision/suppress``.
    public mutating func admit(_ key: Key, now: UInt64) -> Decision {
        if entries[key] != nil {
            return Self.decide(&entries[key]!, now: now, interval: interval, total: &totalSuppressed)
        }
        if entries.count >= maxKeys { prune(now: now) }
        if entries.count < maxKeys {
            entries[key] = Entry(lastLogged: now, suppressed: 0)
            return .log(suppressed: 0)
        }
        guard overflow != nil else {
            overflow = Entry(lastLogged: now, suppressed: 0)
            return .log(suppressed: 0)
        }
        return Self.decide(&overflow!, now: now, interval: interval, total: &totalSuppressed)
    }

    /// Keys whose interval has passed with lines left out: the caller writes one summary line each
    /// (so a flood that stops is still reported), and they start afresh.
    ///
    /// - Parameter now: The current time in nanoseconds.
    /// - Returns: Each such key with its count; `nil` stands for the shared overflow entry.
    public mutating func takeSuppressed(now: UInt64) -> [(key: Key?, suppressed: Int)] {
        var out: [(key: Key?, suppressed: Int)] = []
        for (key, entry) in entries where entry.suppressed > 0 && now &- entry.lastLogged >= interval {
            out.append((key, entry.suppressed))
            entries[key] = Entry(lastLogged: now, suppressed: 0)
        }
        if let entry = overflow, entry.suppressed > 0, now &- entry.lastLogged >= interval {
            out.append((nil, entry.suppressed))
            overflow = Entry(lastLogged: now, suppressed: 0)
        }
        prune(now: now)
        return out
    }

    private mutating func prune(now: UInt64) {
        let interval = self.interval
        entries = entries.filter { $0.value.suppressed > 0 || now &- $0.value.lastLogged < interval }
        if let entry = overflow, entry.suppressed == 0, now &- entry.lastLogged >= interval { overflow = nil }
    }

    private static func decide(_ entry: inout Entry, now: UInt64, interval: UInt64, total: inout Int) -> Decision {
        if now &- entry.lastLogged >= interval {
            let suppressed = entry.suppressed
            entry = Entry(lastLogged: now, suppressed: 0)
            return .log(suppressed: suppressed)
        }
        entry.suppressed += 1
        total += 1
        return .suppress
    }
}

extension LogRateLimiter: Sendable where Key: Sendable {}
