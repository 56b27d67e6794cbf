import Configuration
import Foundation
import SystemPackage

/// Every setting of `secure-broker` by name, the one list that flags, environment variables, the
/// configuration file, `--print-config` and the startup line share. A setting's name is its flag
/// without the dashes (`max-jobs`); its environment variable is `SMQ_BROKER_` and the name in
/// capitals with `_` for `-` (`SMQ_BROKER_MAX_JOBS`, swift-configuration's environment key
/// encoding under the key `smq.broker`); lists (`endpoint`, `cert`) are comma-separated there
/// and JSON arrays in the file.
///
/// Precedence: flags > environment > file > defaults (the first that has a value wins, per
/// setting; a list is taken whole from one layer).
enum BrokerSetting {
    enum Kind {
        case string, int, double, bool, strings
        /// A byte size: `"256M"` or a plain number of bytes.
        case size

        var expected: String {
            switch self {
            case .string: "a string"
            case .int: "an integer"
            case .double: "a number"
            case .bool: "true or false"
            case .strings: "a list of strings"
            case .size: "a size such as \"256M\" or a number of bytes"
            }
        }
    }

    /// (name, kind, default); a nil default is "off" (`metrics-endpoint`).
    static let all: [(key: String, kind: Kind, fallback: ConfigContent?)] = [
        ("endpoint", .strings, .stringArray(["tcp://*:5555"])),
        ("cert", .strings, .stringArray(["certs/broker.key_secret"])),
        ("allowlist", .string, .string("certs/allowed")),
        ("io-threads", .int, .int(SecureBroker.defaultIOThreads)),
        ("strategy", .string, .string("weighted")),
        ("base-window", .int, .int(32)),
        ("byte-budget", .size, .string("256M")),
        ("max-fragments", .int, .int(65_536)),
        ("max-fragment", .size, .string("1M")),
        ("default-role", .string, .string("client")),
        ("max-jobs", .int, .int(64)),
        ("max-ended-jobs", .int, .int(16_384)),
        ("max-connections-per-key", .int, .int(16)),
        ("service-timeout", .double, .double(10)),
        ("work-lease", .double, .double(300)),
        ("slow-client-timeout", .double, .double(60)),
        ("peer-hwm", .int, .int(32)),
        ("max-outbox", .int, .int(4096)),
        ("heartbeat-ms", .int, .int(2500)),
        ("liveness", .int, .int(3)),
        ("max-deliveries", .int, .int(5)),
        ("drain-timeout", .double, .double(10)),
        ("log-interval", .double, .double(10)),
        ("stats-interval", .int, .int(60)),
        ("log-level", .string, .string("info")),
        ("log-format", .string, .string("text")),
        ("metrics-endpoint", .string, nil),
        ("allow-insecure-secret", .bool, .bool(false)),
    ]

    static let environmentPrefix = "SMQ_BROKER_"

    /// The environment variable of a setting: `max-jobs` → `SMQ_BROKER_MAX_JOBS`.
    static func environmentName(_ key: String) -> String {
        environmentPrefix + key.uppercased().replacingOccurrences(of: "-", with: "_")
    }
}

/// A setting problem in the file or the environment: one sentence naming the key and where it was.
struct SettingsError: Error {
    let message: String
}

/// The settings in effect, and where each came from (`flag`, `env`, `file`, `default`).
struct BrokerSettings {
    private(set) var values: [String: ConfigContent] = [:]
    private(set) var sources: [String: String] = [:]
    /// The configuration file read, if any.
    let configFile: String?

    /// Layers `flags` over the environment over the file at `configFile` over the defaults.
    /// - Throws: ``SettingsError`` for an unreadable or malformed file, an unknown key in it, or a
    ///   value of the wrong type in the file or the environment.
    static func resolve(flags: [String: ConfigContent], configFile: String?,
                        environment: [String: String] = ProcessInfo.processInfo.environment) async throws -> BrokerSettings {
        var file: (path: String, provider: FileProvider<JSONSnapshot>)?
        if let configFile { file = (configFile, try await Self.loadFile(configFile)) }
        // The broker's variables only: SMQ_BROKER and SMQ_BROKER_KEY belong to `smq` (C64) and
        // an unknown SMQ_BROKER_* is no error, so the two tools can share one environment.
        let env = EnvironmentVariablesProvider(environmentVariables: environment.filter { $0.key.hasPrefix(BrokerSetting.environmentPrefix) })
        var settings = BrokerSettings(configFile: configFile)
        for (key, kind, fallback) in BrokerSetting.all {
            if let flag = flags[key] {
                settings.set(key, flag, from: "flag")
            } else if let value = try Self.lookup(env, AbsoluteConfigKey(["smq", "broker", key]), kind,
                                                  where: "environment variable \(BrokerSetting.environmentName(key))") {
                settings.set(key, value, from: "env")
            } else if let (path, provider) = file,
                      let value = try Self.lookup(provider, AbsoluteConfigKey([key]), kind, where: "'\(key)' in \(path)") {
                settings.set(key, value, from: "file")
            } else if let fallback {
                settings.set(key, fallback, from: "default")
            }
        }
        return settings
    }

    private mutating func set(_ key: String, _ value: ConfigContent, from source: String) {
        values[key] = value
        sources[key] = source
    }

    /// Reads the file through swift-configuration's JSON provider, after checking what that
    /// provider does not: every key is one the broker knows (a misspelt key silently ignored
    /// would leave a limit at its default), and no value is an object (it would be flattened
    /// into keys of its own, and so be ignored too).
    private static func loadFile(_ path: String) async throws -> FileProvider<JSONSnapshot> {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw SettingsError(message: "cannot read --config \(path): \((error as NSError).localizedDescription)")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data), let top = object as? [String: Any] else {
            throw SettingsError(message: "--config \(path) is not a JSON object of settings (see `secure-broker --print-config` for one)")
        }
        let known = Set(BrokerSetting.all.map(\.key))
        for key in top.keys.sorted() {
            guard known.contains(key) else {
                let hint = key.hasPrefix("--") ? " (write it without the dashes)" : ""
                throw SettingsError(message: "unknown key '\(key)' in \(path)\(hint); keys are the flags' names: \(known.sorted().joined(separator: ", "))")
            }
            if top[key] is [String: Any] {
                throw SettingsError(message: "'\(key)' in \(path) is an object; it must be \(BrokerSetting.all.first { $0.key == key }!.kind.expected)")
            }
        }
        do {
            return try await FileProvider<JSONSnapshot>(filePath: FilePath(path))
        } catch {
            throw SettingsError(message: "--config \(path): \(error)")
        }
    }

    private static func lookup(_ provider: some ConfigProvider, _ key: AbsoluteConfigKey, _ kind: BrokerSetting.Kind,
                               where place: String) throws -> ConfigContent? {
        func value(_ type: ConfigType) throws -> ConfigContent? {
            do {
                return try provider.value(forKey: key, type: type).value?.content
            } catch {
                throw SettingsError(message: "\(place) must be \(kind.expected)")
            }
        }
        switch kind {
        case .string: return try value(.string)
        case .int: return try value(.int)
        case .double: return try value(.double)
        case .bool: return try value(.bool)
        case .strings:
            // A single string is a list of one.
            if let list = try? value(.stringArray) { return list }
            return try value(.string).map { content in
                guard case .string(let one) = content else { return content }
                return .stringArray([one])
            }
        case .size:
            if let text = try? value(.string) { return text }
            guard let number = try value(.int) else { return nil }
            guard case .int(let bytes) = number else { return number }
            return .string(String(bytes))
        }
    }

    func string(_ key: String) -> String {
        if case .string(let value) = values[key] { return value }
        return ""
    }

    func optionalString(_ key: String) -> String? {
        if case .string(let value) = values[key] { return value }
        return nil
    }

    func int(_ key: String) -> Int {
        if case .int(let value) = values[key] { return value }
        return 0
    }

    func double(_ key: String) -> Double {
        if case .double(let value) = values[key] { return value }
        if case .int(let value) = values[key] { return Double(value) }
        return 0
    }

    func bool(_ key: String) -> Bool {
        if case .bool(let value) = values[key] { return value }
        return false
    }

    func strings(_ key: String) -> [String] {
        if case .stringArray(let value) = values[key] { return value }
        return []
    }

    /// Where the value of the setting a message names came from, when that is not a flag:
    /// `" (from SMQ_BROKER_MAX_JOBS)"`, so an error about `--max-jobs` points at the file or
    /// variable that set it.
    func origin(ofSettingIn message: String) -> String {
        for (key, _, _) in BrokerSetting.all where message.contains("--\(key) ") || message.contains("--\(key)=") || message.hasSuffix("--\(key)") {
            switch sources[key] {
            case "env": return " (set by \(BrokerSetting.environmentName(key)))"
            case "file": return " (set by '\(key)' in \(configFile ?? "the configuration file"))"
            default: return ""
            }
        }
        return ""
    }

    /// The effective settings as a JSON object that is itself a valid `--config` file: paths
    /// only, never a key's contents.
    func json() -> String {
        var object: [String: Any] = [:]
        for (key, _, _) in BrokerSetting.all {
            switch values[key] {
            case .string(let value): object[key] = value
            case .int(let value): object[key] = value
            case .double(let value): object[key] = value
            case .bool(let value): object[key] = value
            case .stringArray(let value): object[key] = value
            default: continue
            }
        }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}
