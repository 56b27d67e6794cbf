import Foundation
import Glibc
import Logging

/// `--log-format json`: one JSON object per line on stderr (`ts`, `level`, `label`, `msg`, then
/// the metadata as string fields), for log shippers that should not parse text lines. Values
/// are JSON-escaped here; peer text was already escaped by the broker before it reached a line.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    init(label: String, level: Logger.Level) {
        self.label = label
        logLevel = level
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields = metadata
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        var line = "{\"ts\":\(Self.quoted(Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true)))),"
        line += "\"level\":\(Self.quoted(event.level.rawValue)),\"label\":\(Self.quoted(label)),\"msg\":\(Self.quoted("\(event.message)"))"
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            line += ",\(Self.quoted(key)):\(Self.quoted("\(value)"))"
        }
        line += "}\n"
        line.withCString { _ = write(STDERR_FILENO, $0, strlen($0)) }
    }

    /// A JSON string literal: quotes, backslashes and control characters escaped.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
