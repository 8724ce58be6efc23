internal import CRabbitMQ
import Foundation

/// C memory for one librabbitmq call: strings and tables built from Swift values, freed together.
final class CArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    deinit {
        for pointer in allocations { free(pointer) }
    }

    func bytes(_ text: String) -> amqp_bytes_t {
        bytes(Array(text.utf8))
    }

    func bytes(_ data: [UInt8]) -> amqp_bytes_t {
        guard !data.isEmpty else { return amqp_bytes_t(len: 0, bytes: nil) }
        let pointer = malloc(data.count)!
        data.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: data.count) }
        allocations.append(pointer)
        return amqp_bytes_t(len: data.count, bytes: pointer)
    }

    func cString(_ text: String) -> UnsafePointer<CChar> {
        let pointer = strdup(text)!
        allocations.append(UnsafeMutableRawPointer(pointer))
        return UnsafePointer(pointer)
    }

    /// An `amqp_table_t` from typed values.
    func table(_ entries: [(String, AMQPFieldValue)]) -> amqp_table_t {
        guard !entries.isEmpty else { return amqp_empty_table }
        let size = MemoryLayout<amqp_table_entry_t>.stride * entries.count
        let raw = malloc(size)!
        allocations.append(raw)
        let buffer = raw.bindMemory(to: amqp_table_entry_t.self, capacity: entries.count)
        for (index, (key, value)) in entries.enumerated() {
            buffer[index] = amqp_table_entry_t(key: bytes(key), value: field(value))
        }
        return amqp_table_t(num_entries: Int32(entries.count), entries: buffer)
    }

    func field(_ value: AMQPFieldValue) -> amqp_field_value_t {
        var field = amqp_field_value_t()
        switch value {
        case .string(let text):
            field.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
            field.value.bytes = bytes(text)
        case .int(let number):
            field.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
            field.value.i64 = Int64(number)
        case .bool(let flag):
            field.kind = UInt8(AMQP_FIELD_KIND_BOOLEAN.rawValue)
            field.value.boolean = flag ? 1 : 0
        case .table(let entries):
            field.kind = UInt8(AMQP_FIELD_KIND_TABLE.rawValue)
            field.value.table = table(entries)
        }
        return field
    }
}

/// A value in an AMQP field table (queue arguments, headers, client properties).
public indirect enum AMQPFieldValue: Sendable, Hashable {
    case string(String)
    case int(Int)
    case bool(Bool)
    case table([(String, AMQPFieldValue)])

    public static func == (lhs: AMQPFieldValue, rhs: AMQPFieldValue) -> Bool {
        switch (lhs, rhs) {
        case (.string(let a), .string(let b)): return a == b
        case (.int(let a), .int(let b)): return a == b
        case (.bool(let a), .bool(let b)): return a == b
        case (.table(let a), .table(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    public func hash(into hasher: inout Hasher) {
        switch self {
        case .string(let s): hasher.combine(s)
        case .int(let i): hasher.combine(i)
        case .bool(let b): hasher.combine(b)
        case .table(let t):
            for (k, v) in t {
                hasher.combine(k)
                hasher.combine(v)
            }
        }
    }
}

/// Reading C values back into Swift.
enum CDecode {
    static func string(_ bytes: amqp_bytes_t) -> String {
        guard let pointer = bytes.bytes, bytes.len > 0 else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: bytes.len), as: UTF8.self)
    }

    static func array(_ bytes: amqp_bytes_t) -> [UInt8] {
        guard let pointer = bytes.bytes, bytes.len > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: bytes.len))
    }

    /// A field as text (numbers and booleans printed), nil for tables and arrays.
    static func text(_ value: amqp_field_value_t) -> String? {
        switch UInt32(value.kind) {
        case AMQP_FIELD_KIND_UTF8.rawValue, AMQP_FIELD_KIND_BYTES.rawValue: return string(value.value.bytes)
        case AMQP_FIELD_KIND_I8.rawValue: return String(value.value.i8)
        case AMQP_FIELD_KIND_U8.rawValue: return String(value.value.u8)
        case AMQP_FIELD_KIND_I16.rawValue: return String(value.value.i16)
        case AMQP_FIELD_KIND_U16.rawValue: return String(value.value.u16)
        case AMQP_FIELD_KIND_I32.rawValue: return String(value.value.i32)
        case AMQP_FIELD_KIND_U32.rawValue: return String(value.value.u32)
        case AMQP_FIELD_KIND_I64.rawValue: return String(value.value.i64)
        case AMQP_FIELD_KIND_U64.rawValue, AMQP_FIELD_KIND_TIMESTAMP.rawValue: return String(value.value.u64)
        case AMQP_FIELD_KIND_BOOLEAN.rawValue: return value.value.boolean != 0 ? "true" : "false"
        default: return nil
        }
    }

    static func entries(_ table: amqp_table_t) -> [(String, amqp_field_value_t)] {
        guard table.num_entries > 0, let entries = table.entries else { return [] }
        return (0..<Int(table.num_entries)).map { (string(entries[$0].key), entries[$0].value) }
    }

    /// `x-death`: an array of tables.
    static func deaths(_ value: amqp_field_value_t) -> [AMQPDeathRecord] {
        guard UInt32(value.kind) == AMQP_FIELD_KIND_ARRAY.rawValue else { return [] }
        let array = value.value.array
        guard array.num_entries > 0, let items = array.entries else { return [] }
        return (0..<Int(array.num_entries)).compactMap { index in
            let item = items[index]
            guard UInt32(item.kind) == AMQP_FIELD_KIND_TABLE.rawValue else { return nil }
            var record = AMQPDeathRecord(queue: "", reason: "", count: 0, exchange: "")
            for (key, field) in entries(item.value.table) {
                switch key {
                case "queue": record.queue = text(field) ?? ""
                case "reason": record.reason = text(field) ?? ""
                case "count": record.count = Int(text(field) ?? "") ?? 0
                case "exchange": record.exchange = text(field) ?? ""
                default: break
                }
            }
            return record
        }
    }
}
