import ArgumentParser

/// Range checks for every numeric option, run in `validate()` so a bad value ends with one
/// `Error:` line and exit 64 (ArgumentParser's validation code) before anything is opened.
/// Each bound is the one the protocol or the library would otherwise trap on: a Double that
/// does not fit an `Int` of milliseconds, a max-fragment at or above 4 GiB (the `length` field
/// is 4 bytes, and `ProtocolLimits.init` has a precondition on it), a heartbeat outside §4.1.
enum OptionCheck {
    /// The longest time any option may name: a week. Long enough for any real wait, and far
    /// below what `Duration` and `Int` milliseconds can hold.
    static let maxSeconds: Double = 7 * 86_400

    /// The largest fragment the protocol can describe (PROTOCOL.md C15: `length` is 4 bytes).
    static let maxFragment = Int(UInt32.max)

    /// Seconds as a `Double`: finite, not negative (positive unless `allowZero`), at most a week.
    static func seconds(_ value: Double, option: String, allowZero: Bool = false) throws {
        guard value.isFinite else { throw ValidationError("\(option) must be a number of seconds; got \(value)") }
        guard allowZero ? value >= 0 : value > 0 else {
            throw ValidationError("\(option) must be \(allowZero ? "0 or more" : "more than 0") seconds; got \(value)")
        }
        guard value <= maxSeconds else { throw ValidationError("\(option) must be at most \(Int(maxSeconds)) seconds (a week); got \(value)") }
    }

    /// A `Duration` from seconds already checked with ``seconds(_:option:allowZero:)``.
    static func duration(seconds: Double) -> Duration {
        .milliseconds(Int((min(max(seconds, 0), maxSeconds) * 1000).rounded()))
    }

    /// An integer within `range`.
    static func integer(_ value: Int, option: String, _ range: ClosedRange<Int>) throws {
        guard range.contains(value) else { throw ValidationError("\(option) must be \(range.lowerBound)…\(range.upperBound); got \(value)") }
    }

    /// A size option (`256K`, `1M`) within `range`, or a validation error naming the option.
    static func size(_ text: String, option: String, _ range: ClosedRange<Int>) throws -> Int {
        let bytes = try ByteSize.parse(text, option: option)
        guard range.contains(bytes) else {
            throw ValidationError("\(option) must be \(ByteSize.format(range.lowerBound))…\(ByteSize.format(range.upperBound)) (\(range.upperBound) bytes); got \(text)")
        }
        return bytes
    }
}
