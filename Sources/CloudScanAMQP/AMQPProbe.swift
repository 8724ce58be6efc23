internal import CRabbitMQ
import Dispatch
import Foundation

/// Opens a connection, logs in and closes it: the broker readiness check.
public enum AMQPProbe {
    /// The server's `product` and `version` properties, after a successful login.
    public static func serverProperties(_ configuration: AMQPConfiguration) async throws -> [String: String] {
        try await withCheckedThrowingContinuation { continuation in
            // A blocking rabbitmq-c exchange: keep it off the cooperative pool.
            DispatchQueue.global().async {
                continuation.resume(with: Result { try probe(configuration) })
            }
        }
    }

    private static func probe(_ configuration: AMQPConfiguration) throws -> [String: String] {
        guard let state = amqp_new_connection() else {
            throw AMQPError(code: .connectionFailed, message: "out of memory")
        }
        defer { amqp_destroy_connection(state) }
        guard let socket = amqp_tcp_socket_new(state) else {
            throw AMQPError(code: .connectionFailed, message: "cannot create a socket")
        }
        let seconds = configuration.connectTimeout.components.seconds
        var timeout = timeval(tv_sec: Int(seconds), tv_usec: 0)
        let opened = amqp_socket_open_noblock(socket, configuration.host, Int32(configuration.port), &timeout)
        guard opened == AMQP_STATUS_OK.rawValue else {
            throw AMQPError(
                code: .connectionFailed,
                message:
                    "cannot connect to \(configuration.host):\(configuration.port): \(String(cString: amqp_error_string2(opened)))"
            )
        }
        amqp_set_handshake_timeout(state, &timeout)
        let reply = cloudscan_amqp_login_plain(
            state, configuration.virtualHost, 0, 131_072, Int32(configuration.heartbeatSeconds), nil,
            configuration.user, configuration.password)
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
            throw AMQPError(
                code: .loginFailed,
                message: "login to vhost \(configuration.virtualHost) as \(configuration.user) refused")
        }
        var properties: [String: String] = [:]
        if let table = amqp_get_server_properties(state) {
            for index in 0..<Int(table.pointee.num_entries) {
                let entry = table.pointee.entries[index]
                guard entry.value.kind == UInt8(AMQP_FIELD_KIND_UTF8.rawValue) else { continue }
                properties[bytesToString(entry.key)] = bytesToString(entry.value.value.bytes)
            }
        }
        _ = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
        return properties
    }

    private static func bytesToString(_ bytes: amqp_bytes_t) -> String {
        guard let pointer = bytes.bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: bytes.len), as: UTF8.self)
    }
}
