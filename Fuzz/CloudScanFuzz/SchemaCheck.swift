import CloudScanCore
import Foundation

/// The subset of JSON Schema (2020-12) that topology/schemas/ uses, as an independent second
/// opinion: type, enum, required, properties, additionalProperties, min/maxProperties, items,
/// maxItems, uniqueItems, min/maxLength (code points), minimum/maximum, pattern, format uuid and
/// date-time. Values come from JSONDecoder (`JSONValue`), not from the parser under test.
struct SchemaCheck {
    let schema: JSONValue

    /// A schema of topology/schemas/ by file name (`CLOUDSCAN_SCHEMAS` or ./topology/schemas).
    static func load(_ name: String) -> SchemaCheck {
        let directory = ProcessInfo.processInfo.environment["CLOUDSCAN_SCHEMAS"] ?? "topology/schemas"
        guard let data = FileManager.default.contents(atPath: directory + "/" + name),
            let schema = try? JSONDecoder().decode(JSONValue.self, from: data)
        else { Property.fail("cannot read the schema \(directory)/\(name) (set CLOUDSCAN_SCHEMAS)") }
        return SchemaCheck(schema: schema)
    }

    /// Nil when `value` is valid; else where it is not.
    func problem(_ value: JSONValue) -> String? { Self.problem(value, schema, path: "$") }

    static func problem(_ value: JSONValue, _ schema: JSONValue, path: String) -> String? {
        if let type = schema["type"]?.stringValue, !matches(value, type) { return "\(path): not \(type)" }
        if let options = schema["enum"]?.arrayValue, !options.contains(where: { equal($0, value) }) {
            return "\(path): not in enum"
        }
        switch value {
        case .object(let members):
            for name in schema["required"]?.arrayValue?.compactMap(\.stringValue) ?? [] where members[name] == nil {
                return "\(path).\(name): missing"
            }
            let properties = schema["properties"]?.objectValue ?? [:]
            for (name, member) in members {
                if let sub = properties[name] {
                    if let problem = problem(member, sub, path: "\(path).\(name)") { return problem }
                } else if case .bool(false)? = schema["additionalProperties"] {
                    return "\(path).\(name): not allowed"
                } else if let sub = schema["additionalProperties"], case .object = sub {
                    if let problem = problem(member, sub, path: "\(path).\(name)") { return problem }
                }
            }
            if let minimum = schema["minProperties"]?.intValue, members.count < minimum { return "\(path): too few" }
            if let maximum = schema["maxProperties"]?.intValue, members.count > maximum { return "\(path): too many" }
        case .array(let items):
            if let maximum = schema["maxItems"]?.intValue, items.count > maximum { return "\(path): too many items" }
            if case .bool(true)? = schema["uniqueItems"] {
                for (index, item) in items.enumerated() where items[..<index].contains(where: { equal($0, item) }) {
                    return "\(path): items not unique"
                }
            }
            if let sub = schema["items"] {
                for (index, item) in items.enumerated() {
                    if let problem = problem(item, sub, path: "\(path)[\(index)]") { return problem }
                }
            }
        case .string(let text):
            let length = text.unicodeScalars.count
            if let minimum = schema["minLength"]?.intValue, length < minimum { return "\(path): too short" }
            if let maximum = schema["maxLength"]?.intValue, length > maximum { return "\(path): too long" }
            if let pattern = schema["pattern"]?.stringValue,
                text.range(of: pattern, options: .regularExpression) == nil
            {
                return "\(path): does not match \(pattern)"
            }
            if schema["format"]?.stringValue == "uuid", UUID(uuidString: text) == nil || text.utf8.count != 36 {
                return "\(path): not a uuid"
            }
            if schema["format"]?.stringValue == "date-time", RFC3339.date(from: text) == nil {
                return "\(path): not a date-time"
            }
        case .int, .double:
            let number = numeric(value) ?? .nan
            if let minimum = schema["minimum"].flatMap(numeric), number < minimum { return "\(path): below minimum" }
            if let maximum = schema["maximum"].flatMap(numeric), number > maximum { return "\(path): above maximum" }
        default:
            break
        }
        return nil
    }

    static func matches(_ value: JSONValue, _ type: String) -> Bool {
        switch (type, value) {
        case ("object", .object), ("array", .array), ("string", .string), ("boolean", .bool), ("null", .null):
            return true
        case ("integer", .int): return true
        case ("integer", .double(let number)): return number.rounded() == number && number.isFinite
        case ("number", .int), ("number", .double): return true
        default: return false
        }
    }

    static func numeric(_ value: JSONValue) -> Double? {
        switch value {
        case .int(let number): return Double(number)
        case .double(let number): return number
        default: return nil
        }
    }

    static func equal(_ a: JSONValue, _ b: JSONValue) -> Bool {
        if let x = numeric(a), let y = numeric(b) { return x == y }
        return a == b
    }
}
