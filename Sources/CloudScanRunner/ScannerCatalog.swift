import CloudScanCore
import CloudScanInbound
import Foundation

/// The scanners the runner knows, by scan type: `scanners/scanners.json`. A scanner that writes
/// SARIF 2.1.0 is added by adding an entry — no code.
///
/// In `command`, `{out}` is the scanner's own output directory, `{config}` the directory of the
/// catalog file (rules kept beside it), `{files}` the files matching `inputs` (one argument each).
public struct ScannerCatalog: Sendable, Decodable {
    public struct Scanner: Sendable, Decodable, Equatable {
        public enum Format: String, Sendable, Decodable {
            /// SARIF 2.1.0.
            case sarif
            /// shellcheck `-f json1`, converted to SARIF.
            case shellcheckJSON1 = "shellcheck-json1"
            /// detect-secrets `scan` JSON, converted to SARIF.
            case detectSecretsJSON = "detect-secrets-json"
            /// A CycloneDX SBOM, matched against an OSV advisory directory into SARIF.
            case cyclonedxOSV = "cyclonedx-osv"
        }

        public var name: String
        public var scanType: ScanType
        public var format: Format
        public var command: [String]
        /// The result file inside `{out}`; `"stdout"` reads what the scanner printed.
        public var result: String
        /// Exit codes that mean "ran" (several scanners exit 1 when they find something).
        public var okExitCodes: [Int32]
        public var timeoutSeconds: Int
        /// Glob patterns (`*.sh`, `Dockerfile*`); when set, the scanner runs only if some file
        /// matches, and `{files}` lists them.
        public var inputs: [String]?
        /// Files whose first line matches one of these shebang fragments also count as inputs.
        public var inputShebangs: [String]?
        /// Extra environment for the scanner.
        public var environment: [String: String]?
        /// Rule ids are the last dot-separated part of what the scanner reports (semgrep prefixes
        /// the rules file's path).
        public var ruleIDLastComponent: Bool?

        enum CodingKeys: String, CodingKey {
            case name, format, command, result, inputs, environment
            case scanType = "scan_type"
            case okExitCodes = "ok_exit_codes"
            case timeoutSeconds = "timeout_seconds"
            case inputShebangs = "input_shebangs"
            case ruleIDLastComponent = "rule_id_last_component"
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            name = try container.decode(String.self, forKey: .name)
            scanType = try container.decode(ScanType.self, forKey: .scanType)
            format = try container.decodeIfPresent(Format.self, forKey: .format) ?? .sarif
            command = try container.decode([String].self, forKey: .command)
            result = try container.decodeIfPresent(String.self, forKey: .result) ?? "result.sarif"
            okExitCodes = try container.decodeIfPresent([Int32].self, forKey: .okExitCodes) ?? [0]
            timeoutSeconds = try container.decodeIfPresent(Int.self, forKey: .timeoutSeconds) ?? 600
            inputs = try container.decodeIfPresent([String].self, forKey: .inputs)
            inputShebangs = try container.decodeIfPresent([String].self, forKey: .inputShebangs)
            environment = try container.decodeIfPresent([String: String].self, forKey: .environment)
            ruleIDLastComponent = try container.decodeIfPresent(Bool.self, forKey: .ruleIDLastComponent)
            guard !command.isEmpty, !name.isEmpty else {
                throw DecodingError.dataCorrupted(
                    .init(codingPath: container.codingPath, debugDescription: "a scanner needs a name and a command"))
            }
        }
    }

    public var scanners: [Scanner]
    /// The directory the catalog was read from (`{config}`).
    public var directory: String = ""

    enum CodingKeys: String, CodingKey { case scanners }

    public static func load(path: String) throws -> ScannerCatalog {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        var catalog = try JSONDecoder().decode(ScannerCatalog.self, from: data)
        catalog.directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        let names = catalog.scanners.map(\.name)
        guard Set(names).count == names.count else {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "scanner names must be unique"))
        }
        return catalog
    }

    public func scanners(for types: [ScanType]) -> [Scanner] {
        scanners.filter { types.contains($0.scanType) }
    }
}

/// Finds a scanner's input files under the source root.
enum InputFiles {
    static func matching(_ scanner: ScannerCatalog.Scanner, root: String) -> [String] {
        let patterns = scanner.inputs ?? []
        let shebangs = scanner.inputShebangs ?? []
        guard !patterns.isEmpty || !shebangs.isEmpty else { return [] }
        var found: [String] = []
        guard let enumerator = FileManager.default.enumerator(atPath: root) else { return [] }
        while let relative = enumerator.nextObject() as? String {
            let full = root + "/" + relative
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: full, isDirectory: &isDirectory), !isDirectory.boolValue else {
                continue
            }
            if relative.split(separator: "/").contains(where: { $0 == ".git" || $0 == "node_modules" }) { continue }
            let name = String(relative.split(separator: "/").last ?? "")
            if patterns.contains(where: { glob($0, matches: name) }) {
                found.append(relative)
            } else if !shebangs.isEmpty, let first = firstLine(full), first.hasPrefix("#!"),
                shebangs.contains(where: { first.contains($0) })
            {
                found.append(relative)
            }
        }
        return found.sorted()
    }

    static func firstLine(_ path: String) -> String? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: 256) else { return nil }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").first.map(String.init)
    }

    /// `*` and `?` globs against a file name.
    static func glob(_ pattern: String, matches name: String) -> Bool {
        let p = Array(pattern)
        let n = Array(name)
        var pi = 0
        var ni = 0
        var star = -1
        var mark = 0
        while ni < n.count {
            if pi < p.count && (p[pi] == "?" || p[pi] == n[ni]) {
                pi += 1
                ni += 1
            } else if pi < p.count && p[pi] == "*" {
                star = pi
                mark = ni
                pi += 1
            } else if star >= 0 {
                pi = star + 1
                mark += 1
                ni = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == "*" { pi += 1 }
        return pi == p.count
    }
}
