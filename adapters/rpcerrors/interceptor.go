package rpcerrors

import (
	"context"
	"log/slog"

	"connectrpc.com/connect"
)

// NewInterceptor turns every handler error into its Connect form and logs
// the full error at its class's level, for all Connect and gRPC handlers.
func NewInterceptor(logger *slog.Logger) connect.Interceptor {
	return connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			res, err := next(ctx, req)
			if err != nil {
				c := Classify(err)
				logger.Log(ctx, c.Level, "rpc failed", "procedure", req.Spec().Procedure, "identifier", c.Identifier, "err", err)
				return nil, ToConnect(err)
			}
			return res, nil
		}
	})
}
