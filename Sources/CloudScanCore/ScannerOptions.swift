import Foundation

/// A project's options for its scanners, by scanner name (the catalog's names: semgrep, bandit,
/// …): `{"bandit": {"enabled": false}, "semgrep": {"exclude_paths": ["tests/*", "*.min.js"]}}`.
///
/// - `enabled: false` skips the scanner (its outcome is `skipped`, reason "disabled by the
///   project's scanner options"; the result is not partial for it).
/// - `exclude_paths` drops findings whose path (relative to the repository root) matches one of
///   the shell patterns (`fnmatch`, `*` also crosses `/`).
///
/// Options are read when the scan is dispatched and travel to the runner in
/// `CLOUDSCAN_SCANNER_OPTIONS`. Nothing here can make a scanner reach the network or write
/// outside its directory: arguments are not configurable.
public struct ScannerOptions: Sendable, Hashable {
    public struct Scanner: Sendable, Hashable {
        public var enabled: Bool
        public var excludePaths: [String]
        public init(enabled: Bool = true, excludePaths: [String] = []) {
            self.enabled = enabled
            self.excludePaths = excludePaths
        }
    }

    public var scanners: [String: Scanner]

    public init(scanners: [String: Scanner] = [:]) { self.scanners = scanners }

    public static let maximumPatterns = 100

    /// Checks a project's `scanner_options` document; every failure names the field.
    public init(_ value: JSONValue) throws(ScanServiceError) {
        guard case .object(let fields) = value else {
            throw .invalidArgument(field: "scanner_options", "a JSON object: scanner name → options")
        }
        var scanners: [String: Scanner] = [:]
        for (name, options) in fields {
            let field = "scanner_options.\(name)"
            guard name.range(of: #"^[a-z0-9][a-z0-9-]{0,62}$"#, options: .regularExpression) != nil else {
                throw .invalidArgument(field: "scanner_options", "'\(name.prefix(64))' is not a scanner name")
            }
            guard case .object(let settings) = options else {
                throw .invalidArgument(field: field, "an object with enabled and/or exclude_paths")
            }
            var scanner = Scanner()
            for (key, setting) in settings {
                switch (key, setting) {
                case ("enabled", .bool(let flag)): scanner.enabled = flag
                case ("enabled", _): throw .invalidArgument(field: "\(field).enabled", "true or false")
                case ("exclude_paths", .array(let patterns)):
                    guard patterns.count <= Self.maximumPatterns else {
                        throw .invalidArgument(
                            field: "\(field).exclude_paths", "at most \(Self.maximumPatterns) patterns")
                    }
                    for pattern in patterns {
                        guard case .string(let text) = pattern, !text.isEmpty, text.count <= 200,
                            !text.unicodeScalars.contains(where: { $0.value < 0x20 })
                        else {
                            throw .invalidArgument(
                                field: "\(field).exclude_paths", "patterns are strings of 1-200 characters")
                        }
                        scanner.excludePaths.append(text)
                    }
                case ("exclude_paths", _):
                    throw .invalidArgument(field: "\(field).exclude_paths", "an array of path patterns")
                default:
                    throw .invalidArgument(field: "\(field).\(key)", "not an option (enabled, exclude_paths)")
                }
            }
            scanners[name] = scanner
        }
        self.scanners = scanners
    }

    public func isEnabled(_ scanner: String) -> Bool { scanners[scanner]?.enabled ?? true }

    /// Whether a finding at `path` is excluded for `scanner`.
    public func excludes(_ scanner: String, path: String?) -> Bool {
        guard let path, let patterns = scanners[scanner]?.excludePaths, !patterns.isEmpty else { return false }
        let relative = path.hasPrefix("./") ? String(path.dropFirst(2)) : path
        return patterns.contains { fnmatch($0, relative, 0) == 0 }
    }
}
