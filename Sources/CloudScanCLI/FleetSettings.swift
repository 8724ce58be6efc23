import ArgumentParser
import Foundation
import Yams

/// Every role's settings, one way: flags (each command's own) > environment > config.yaml >
/// defaults. config.yaml (`CLOUDSCAN_CONFIG`, else `./config.yaml` when present) is a flat map of
/// the same keys as the environment (`DB_HOST: db.internal`, `NOTIFY_CONCURRENCY: 32`).
///
/// The seed's names are accepted beside the fleet's: `PROMETHEUS_PORT` for `METRICS_PORT`, and
/// `STORAGE_SERVICE_URL` for `STORAGE_URL`.
enum FleetSettings {
    static let aliases = ["PROMETHEUS_PORT": "METRICS_PORT", "STORAGE_SERVICE_URL": "STORAGE_URL"]

    /// The merged settings (read once).
    static let values: [String: String] = {
        do {
            return try merged(
                environment: ProcessInfo.processInfo.environment,
                file: ProcessInfo.processInfo.environment["CLOUDSCAN_CONFIG"])
        } catch {
            FileHandle.standardError.write(Data("cloudscan: \(error)\n".utf8))
            exit(64)
        }
    }()

    /// config.yaml under the environment, with the aliases filled in where the fleet's name is unset.
    static func merged(environment: [String: String], file: String?) throws -> [String: String] {
        var values: [String: String] = [:]
        let path = file ?? (FileManager.default.fileExists(atPath: "config.yaml") ? "config.yaml" : nil)
        if let path {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ValidationError("CLOUDSCAN_CONFIG: cannot read \(path)")
            }
            let document: Any?
            do {
                document = try Yams.load(yaml: text)
            } catch {
                throw ValidationError("\(path): not YAML (\(error))")
            }
            guard let map = document as? [String: Any] else {
                throw ValidationError("\(path): a map of setting names to values, like the environment's")
            }
            for (key, value) in map {
                switch value {
                case let text as String: values[key] = text
                case let flag as Bool: values[key] = flag ? "true" : "false"
                case let number as Int: values[key] = String(number)
                case let number as Double: values[key] = String(number)
                default: throw ValidationError("\(path): \(key) must be a string, number or boolean")
                }
            }
        }
        values.merge(environment) { _, fromEnvironment in fromEnvironment }
        for (alias, name) in aliases where values[name]?.isEmpty ?? true {
            if let value = values[alias] { values[name] = value }
        }
        return values
    }

    /// A whole number setting within `range`; a bad value is an error naming the key.
    static func integer(
        _ key: String, _ fallback: Int, in range: ClosedRange<Int> = 1...Int.max, from values: [String: String] = values
    ) throws -> Int {
        guard let text = values[key], !text.isEmpty else { return fallback }
        guard let value = Int(text.trimmingCharacters(in: .whitespaces)), range.contains(value) else {
            let bound =
                range.upperBound == Int.max ? "≥ \(range.lowerBound)" : "\(range.lowerBound)…\(range.upperBound)"
            let named = aliases.first { $0.value == key }.map { "\(key) (or \($0.key))" } ?? key
            throw ValidationError("\(named): '\(text)' is not a whole number \(bound)")
        }
        return value
    }
}
