import ArgumentParser
import SecureMQ

extension Keygen {
    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate an allowlist directory: list its entries and every problem.",
            discussion: """
                Reads the directory exactly as the broker does: one line per entry (name, role, \
                weight, key fingerprint, file) and one per problem (a file that does not parse, \
                invalid role/weight/services, two files with the same key, a secret file that does \
                not belong there). Exits with status 1 if there is any problem.

                Example:
                  keygen check certs/allowed
                """
        )

        @Argument(help: "The allowlist directory (public certificate files).")
        var directory: String

        func run() throws {
            let list = try Allowlist(directory: directory)
            let entries = list.entries
            if entries.isEmpty {
                print("no entries in \(directory): nobody is allowed in")
            } else {
                let rows = [["NAME", "ROLE", "WEIGHT", "KEY", "FILE"]] + entries.map { entry in
                    [entry.name, entry.role?.rawValue ?? "-", String(entry.weight), entry.publicKey.fingerprint, entry.path ?? ""]
                }
                let widths = (0..<4).map { column in rows.map { $0[column].count }.max() ?? 0 }
                for row in rows {
                    let padded = (0..<4).map { row[$0] + String(repeating: " ", count: widths[$0] - row[$0].count) }
                    print((padded + [row[4]]).joined(separator: "  "))
                }
            }
            let problems = list.problems
            for problem in problems { printError("problem: \(problem)") }
            guard problems.isEmpty else {
                throw CLIError("\(problems.count) problem\(problems.count == 1 ? "" : "s") in \(directory): fix or remove the files listed above")
            }
        }
    }
}
