import Foundation

/// One schema change: `Migrations/NNNN_name.up.sql` and its optional `.down.sql`.
public struct Migration: Sendable, Hashable {
    /// The number in the file name; migrations apply in ascending order.
    public var version: Int
    /// The part of the file name after the number.
    public var name: String
    /// SQL applied by `up` (one transaction; the script must not BEGIN/COMMIT itself).
    public var up: String
    /// SQL applied by `down`, if the migration can be reverted.
    public var down: String?

    /// A migration from its parts.
    public init(version: Int, name: String, up: String, down: String?) {
        self.version = version
        self.name = name
        self.up = up
        self.down = down
    }

    /// Reads every `NNNN_name.up.sql` (and `.down.sql`) in a directory, sorted by version.
    /// Throws for a malformed name, a duplicated version or a `.down.sql` without its `.up.sql`.
    public static func load(directory: URL) throws -> [Migration] {
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".sql") }
        var ups: [Int: (String, String)] = [:]
        var downs: [Int: (String, String)] = [:]
        for file in files {
            let isUp = file.hasSuffix(".up.sql")
            guard isUp || file.hasSuffix(".down.sql") else {
                throw MigrationError.malformedFileName(file)
            }
            let stem = String(file.dropLast(isUp ? 7 : 9))
            guard let underscore = stem.firstIndex(of: "_"), let version = Int(stem[..<underscore]) else {
                throw MigrationError.malformedFileName(file)
            }
            let name = String(stem[stem.index(after: underscore)...])
            let text = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
            if isUp {
                if ups[version] != nil { throw MigrationError.duplicateVersion(version) }
                ups[version] = (name, text)
            } else {
                if downs[version] != nil { throw MigrationError.duplicateVersion(version) }
                downs[version] = (name, text)
            }
        }
        if let orphan = downs.keys.first(where: { ups[$0] == nil }) {
            throw MigrationError.downWithoutUp(orphan)
        }
        return ups.keys.sorted().map { version in
            let (name, up) = ups[version]!
            return Migration(version: version, name: name, up: up, down: downs[version]?.1)
        }
    }
}

/// Why migrations could not be loaded or applied.
public enum MigrationError: Error, CustomStringConvertible, Equatable {
    case malformedFileName(String)
    case duplicateVersion(Int)
    case downWithoutUp(Int)
    /// An applied migration's file changed since it was applied.
    case checksumMismatch(version: Int, name: String)
    /// The database has a migration this binary does not know (a newer release applied it).
    case unknownAppliedVersion(Int)
    /// `down` needs a `.down.sql` that does not exist.
    case irreversible(version: Int, name: String)

    public var description: String {
        switch self {
        case .malformedFileName(let file):
            return "migration file \(file) is not named NNNN_name.up.sql or NNNN_name.down.sql"
        case .duplicateVersion(let v): return "migration version \(v) appears twice"
        case .downWithoutUp(let v): return "migration \(v) has a .down.sql but no .up.sql"
        case .checksumMismatch(let v, let name):
            return
                "migration \(v)_\(name) was changed after it was applied; refusing to continue (write a new migration instead)"
        case .unknownAppliedVersion(let v):
            return "the database has migration \(v) applied, which this build does not know; refusing to continue"
        case .irreversible(let v, let name): return "migration \(v)_\(name) has no .down.sql"
        }
    }
}
