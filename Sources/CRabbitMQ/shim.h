#ifndef CLOUDSCAN_CRABBITMQ_SHIM_H
#define CLOUDSCAN_CRABBITMQ_SHIM_H
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>
#include <sys/eventfd.h>

/// A non-blocking, close-on-exec eventfd (the worker threads' wake-up).
static inline int cloudscan_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

/// amqp_login_with_properties is variadic; this fixes the PLAIN mechanism's two arguments.
static inline amqp_rpc_reply_t cloudscan_amqp_login_plain(
    amqp_connection_state_t state, const char *vhost, int channel_max, int frame_max,
    int heartbeat, const amqp_table_t *client_properties, const char *user, const char *password) {
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat,
                                      client_properties, AMQP_SASL_METHOD_PLAIN, user, password);
}

/* Method ids and property flags are cast macros that Swift does not import. */
static const uint32_t CS_AMQP_BASIC_DELIVER = AMQP_BASIC_DELIVER_METHOD;
static const uint32_t CS_AMQP_BASIC_ACK = AMQP_BASIC_ACK_METHOD;
static const uint32_t CS_AMQP_BASIC_NACK = AMQP_BASIC_NACK_METHOD;
static const uint32_t CS_AMQP_BASIC_RETURN = AMQP_BASIC_RETURN_METHOD;
static const uint32_t CS_AMQP_BASIC_CANCEL = AMQP_BASIC_CANCEL_METHOD;
static const uint32_t CS_AMQP_CHANNEL_CLOSE = AMQP_CHANNEL_CLOSE_METHOD;
static const uint32_t CS_AMQP_CHANNEL_CLOSE_OK = AMQP_CHANNEL_CLOSE_OK_METHOD;
static const uint32_t CS_AMQP_CONNECTION_CLOSE = AMQP_CONNECTION_CLOSE_METHOD;
static const uint32_t CS_AMQP_CONNECTION_CLOSE_OK = AMQP_CONNECTION_CLOSE_OK_METHOD;
static const uint32_t CS_AMQP_CONNECTION_BLOCKED = AMQP_CONNECTION_BLOCKED_METHOD;
static const uint32_t CS_AMQP_CONNECTION_UNBLOCKED = AMQP_CONNECTION_UNBLOCKED_METHOD;
static const uint32_t CS_AMQP_BASIC_CANCEL_OK = AMQP_BASIC_CANCEL_OK_METHOD;
static const uint32_t CS_AMQP_QUEUE_DECLARE = AMQP_QUEUE_DECLARE_METHOD;
static const uint32_t CS_AMQP_QUEUE_DECLARE_OK = AMQP_QUEUE_DECLARE_OK_METHOD;
static const uint32_t CS_AMQP_EXCHANGE_DECLARE = AMQP_EXCHANGE_DECLARE_METHOD;
static const uint32_t CS_AMQP_EXCHANGE_DECLARE_OK = AMQP_EXCHANGE_DECLARE_OK_METHOD;

static const uint32_t CS_AMQP_FLAG_CONTENT_TYPE = AMQP_BASIC_CONTENT_TYPE_FLAG;
static const uint32_t CS_AMQP_FLAG_HEADERS = AMQP_BASIC_HEADERS_FLAG;
static const uint32_t CS_AMQP_FLAG_DELIVERY_MODE = AMQP_BASIC_DELIVERY_MODE_FLAG;
static const uint32_t CS_AMQP_FLAG_CORRELATION_ID = AMQP_BASIC_CORRELATION_ID_FLAG;
static const uint32_t CS_AMQP_FLAG_MESSAGE_ID = AMQP_BASIC_MESSAGE_ID_FLAG;
static const uint32_t CS_AMQP_FLAG_TIMESTAMP = AMQP_BASIC_TIMESTAMP_FLAG;
static const uint32_t CS_AMQP_FLAG_TYPE = AMQP_BASIC_TYPE_FLAG;
static const uint32_t CS_AMQP_FLAG_APP_ID = AMQP_BASIC_APP_ID_FLAG;

/* The decoded method of a frame (a union member Swift reaches awkwardly). */
static inline uint32_t cloudscan_amqp_frame_method_id(const amqp_frame_t *f) { return f->payload.method.id; }
static inline void *cloudscan_amqp_frame_method_decoded(const amqp_frame_t *f) { return f->payload.method.decoded; }
#endif
