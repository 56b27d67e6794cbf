import PropertyBased
import SMQProtocol
import Testing

@Suite("Peer text is escaped before it reaches a log, a terminal or a peer")
struct PeerTextTests {
    @Test("printable text is kept as it is", arguments: ["", "plain reason", "é€😀 ok", "a/b:c=d"])
    func printableTextIsUnchanged(text: String) {
        #expect(PeerText.escaped(text) == text)
        #expect(PeerText.isPrintable(text))
    }

    @Test("newlines, ESC, DEL, C1 controls and bidi overrides become visible escapes")
    func controlsAreEscaped() {
        #expect(PeerText.escaped("line1\nFAKE level=error") == "line1\\nFAKE level=error")
        #expect(PeerText.escaped("\u{1B}[2J\u{1B}]0;owned\u{07}") == "\\u{1B}[2J\\u{1B}]0;owned\\u{7}")
        #expect(PeerText.escaped("a\rb\tc\\d") == "a\\rb\\tc\\d")
        #expect(PeerText.escaped("x\u{7F}\u{85}\u{9B}y") == "x\\u{7F}\\u{85}\\u{9B}y")
        #expect(PeerText.escaped("admin\u{202E}gpj.exe") == "admin\\u{202E}gpj.exe")
        #expect(PeerText.escaped("zero\u{200B}width\u{2028}sep\u{FEFF}") == "zero\\u{200B}width\\u{2028}sep\\u{FEFF}")
        #expect(!PeerText.isPrintable("a\u{202E}b"))
    }

    @Test("invalid UTF-8 bytes are repaired, then escaped")
    func bytesAreDecodedThenEscaped() {
        let bytes: [UInt8] = [0x61, 0xFF, 0x0A, 0x1B, 0x62]
        let text = bytes.withUnsafeBytes { PeerText.escaped($0) }
        #expect(text == "a\u{FFFD}\\n\\u{1B}b")
    }

    @Test("any text escapes to one line of printable scalars, and escaping twice changes nothing")
    func escapedTextIsAlwaysOnePrintableLine() async {
        await propertyCheck(input: Gen.int(in: 0...0x10FFFF).array(of: 0...24)) { values in
            let scalars = values.compactMap { Unicode.Scalar(UInt32($0)) }
            var text = ""
            text.unicodeScalars.append(contentsOf: scalars)
            let escaped = PeerText.escaped(text)
            #expect(PeerText.isPrintable(escaped))
            #expect(!escaped.contains("\n") && !escaped.contains("\r") && !escaped.unicodeScalars.contains("\u{1B}"))
            // Idempotent: a reason escaped by the broker is not escaped again by the client.
            #expect(PeerText.escaped(escaped) == escaped)
        }
    }
}

@Suite("Log rate limiter: one line per key per interval, with counts")
struct LogRateLimiterTests {
    let second: UInt64 = 1_000_000_000

    @Test("a flood of one key writes one line per interval and reports what it left out")
    func floodIsCollapsed() {
        var limiter = LogRateLimiter<String>(interval: 10 * second)
        #expect(limiter.admit("peer-a/bad", now: 0) == .log(suppressed: 0))
        for step in 1...999 {
            #expect(limiter.admit("peer-a/bad", now: UInt64(step) * 1_000_000) == .suppress)
        }
        #expect(limiter.totalSuppressed == 999)
        // Another key is not held back by the first one's flood.
        #expect(limiter.admit("peer-b/bad", now: 5 * second) == .log(suppressed: 0))
        #expect(limiter.admit("peer-a/bad", now: 10 * second) == .log(suppressed: 999))
        #expect(limiter.admit("peer-a/bad", now: 10 * second + 1) == .suppress)
    }

    @Test("a flood that stops is still reported once its interval has passed")
    func quietKeysAreSummarised() {
        var limiter = LogRateLimiter<Int>(interval: second)
        _ = limiter.admit(7, now: 0)
        _ = limiter.admit(7, now: 1)
        _ = limiter.admit(7, now: 2)
        #expect(limiter.takeSuppressed(now: second / 2).isEmpty)
        let summary = limiter.takeSuppressed(now: second)
        #expect(summary.count == 1 && summary[0].key == 7 && summary[0].suppressed == 2)
        #expect(limiter.takeSuppressed(now: 2 * second).isEmpty)
        // Forgotten once quiet: the table does not keep idle keys.
        #expect(limiter.count == 0)
    }

    @Test("the table never holds more than maxKeys, whatever the number of keys")
    func tableIsBounded() {
        var limiter = LogRateLimiter<Int>(interval: second, maxKeys: 16)
        var logged = 0
        for key in 0..<100_000 {
            if case .log = limiter.admit(key, now: UInt64(key)) { logged += 1 }
            #expect(limiter.count <= 16)
        }
        // 16 keys of their own and one shared overflow line within the interval.
        #expect(logged == 17)
        #expect(limiter.totalSuppressed == 100_000 - 17)
        let summary = limiter.takeSuppressed(now: 10 * second)
        #expect(summary.contains { $0.key == nil && $0.suppressed == 100_000 - 17 })
    }
}
