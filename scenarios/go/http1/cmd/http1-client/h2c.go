package main

// The h2c-plain client: the same plan over net/http's own HTTP/2, cleartext with
// prior knowledge (http.Protocols.UnencryptedHTTP2, no upgrade). One Transport
// per lane keeps each lane on one connection, its requests one after another
// as on an HTTP/1.1 keep-alive connection.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"

	"probebench/scenarios/http1/plan"
)

// h2cTransport speaks HTTP/2 only, without TLS: the preface opens the connection.
func h2cTransport() *http.Transport {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	// DisableCompression: no accept-encoding added, so the headers are the plan's.
	return &http.Transport{Protocols: &p, DisableCompression: true}
}

// h2cRequest is req as an HTTP/2 request: a body the plan streams ("chunked")
// goes without a content-length, in DATA frames as the transport reads it.
func (c *client) h2cRequest(ctx context.Context, req plan.Request) (*http.Request, error) {
	var body io.Reader
	if plan.HasBody(req.Method) {
		body = bytes.NewReader(plan.Body(req.ReqBytes))
	}
	r, err := http.NewRequestWithContext(ctx, req.Method, "http://"+c.addr+req.Path, body)
	if err != nil {
		return nil, err
	}
	r.Host = c.hostHeader
	r.Header.Set("x-probebench-id", strconv.Itoa(req.ID))
	for _, h := range req.Headers {
		r.Header.Add(h[0], h[1])
	}
	if req.ReqChunked {
		r.ContentLength = -1 // unknown to the transport: no content-length is sent
	}
	return r, nil
}

func (c *client) runH2C(l *lane, reqs []plan.Request, phase string) error {
	if l.h2 == nil {
		l.h2 = h2cTransport()
	}
	ctx, cancel := context.WithDeadline(context.Background(), c.deadline)
	defer cancel()
	for _, req := range reqs {
		c.pace(req.ID, phase)
		var local, remote *net.TCPAddr
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			local, _ = info.Conn.LocalAddr().(*net.TCPAddr)
			remote, _ = info.Conn.RemoteAddr().(*net.TCPAddr)
		}}
		r, err := c.h2cRequest(httptrace.WithClientTrace(ctx, trace), req)
		if err != nil {
			return fmt.Errorf("id %d: %w", req.ID, err)
		}
		tStart := c.clock.Now()
		resp, err := l.h2.RoundTrip(r)
		if err != nil {
			return fmt.Errorf("id %d: %w", req.ID, err)
		}
		data, err := io.ReadAll(io.LimitReader(resp.Body, plan.MaxBody+1))
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("id %d: read body: %w", req.ID, err)
		}
		tEnd := c.clock.Now()
		if err := c.verify(req, resp, data); err != nil {
			return err
		}
		if local == nil || remote == nil {
			return fmt.Errorf("id %d: the transport reported no connection", req.ID)
		}
		l.records = append(l.records, record{
			ID: req.ID, Protocol: "h2c",
			ClientIP: local.IP.String(), ClientPort: local.Port,
			ServerIP: remote.IP.String(), ServerPort: remote.Port,
			ConnSeq: l.connSeq, Method: req.Method, Path: req.Path, Status: resp.StatusCode,
			ReqBytes: req.ReqBytes, RespBytes: len(data),
			TStartNs: tStart, TEndNs: tEnd, Phase: phase,
		})
		l.connSeq++
	}
	return nil
}
