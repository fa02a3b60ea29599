package approvalweb

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"time"

	"github.com/bridle-sh/bridle/daemon/approvals"
)

// historyLen is how many answered or expired requests the page shows.
const historyLen = 50

// durations are the page's choices of how long an approval lasts; those
// beyond a request's max_ttl are left out.
var durations = []time.Duration{2 * time.Minute, 10 * time.Minute, 30 * time.Minute, time.Hour, 4 * time.Hour, 24 * time.Hour}

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"age":      age,
	"when":     func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") },
	"short":    shortDuration,
	"approver": answerBy,
}).Parse(`{{define "page"}}<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bridle approvals</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script></head>
<body>
<header><h1>Bridle approvals</h1>
<div class="who">Signed in as <b>{{.Who}}</b>
<form method="post" action="signout"><input type="hidden" name="csrf" value="{{.CSRF}}"><button>Sign out</button></form></div>
<div id="live" class="live">connecting…</div></header>
<main id="requests">{{template "requests" .}}</main>
</body></html>{{end}}

{{define "requests"}}<h2>Pending <span class="count">{{len .Pending}}</span></h2>
{{if not .Pending}}<p class="none">Nothing is waiting for an answer.</p>{{end}}
{{range .Pending}}<section class="request" id="req-{{.ID}}">
<h3><span class="action">{{.Action}}</span> <span class="target">{{.Target}}</span></h3>
<dl>
<dt>Identity</dt><dd>{{.Identity}}</dd>
<dt>Intent</dt><dd>{{.Intent}}</dd>
<dt>Why refused</dt><dd>{{.Reason}}</dd>
<dt>Process</dt><dd>{{.Comm}} (pid {{.PID}})</dd>
<dt>Task</dt><dd>{{.Task}} · {{.Workload}}</dd>
<dt>Asked</dt><dd>{{age .Opened}} ago · unanswered it expires at {{when .Expires}}</dd>
<dt>Request</dt><dd>{{.ID}}{{if .MaxTTL}} · at most {{short .MaxTTL}}{{end}}</dd>
</dl>
<div class="answers">
<form method="post" action="requests/{{.ID}}/approve" class="approve">
<input type="hidden" name="csrf" value="{{$.CSRF}}">
<label>Approve for <select name="for">{{range (index $.Choices .ID)}}<option value="{{.}}">{{short .}}</option>{{end}}</select></label>
<button type="submit">Approve</button></form>
<form method="post" action="requests/{{.ID}}/deny" class="deny">
<input type="hidden" name="csrf" value="{{$.CSRF}}">
<label>Reason <input type="text" name="reason" maxlength="500" placeholder="why not"></label>
<button type="submit">Deny</button></form>
</div></section>{{end}}
<h2>Recent</h2>
{{if not .History}}<p class="none">No answers yet.</p>{{else}}<table class="history">
<thead><tr><th>Asked</th><th>Request</th><th>Identity</th><th>Intent</th><th>Action</th><th>Target</th><th>State</th><th>By</th><th>Detail</th></tr></thead><tbody>
{{range .History}}<tr class="{{.State}}"><td>{{when .Opened}}</td><td>{{.ID}}</td><td>{{.Identity}}</td><td>{{.Intent}}</td><td>{{.Action}}</td><td>{{.Target}}</td><td>{{.State}}</td>
<td>{{with .Answer}}{{approver .}}{{end}}</td>
<td>{{with .Answer}}{{if .For}}for {{short .For}}{{if not .GrantEnds.IsZero}}, until {{when .GrantEnds}}{{end}}{{end}}{{.Reason}}{{end}}</td></tr>{{end}}
</tbody></table>{{end}}{{end}}

{{define "message"}}<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bridle approvals</title>
<link rel="stylesheet" href="/static/app.css"></head>
<body><header><h1>Bridle approvals</h1></header>
<main><p class="message">{{.Text}}</p><p><a href="{{.Back}}">Back to the approvals</a></p></main></body></html>{{end}}`))

type view struct {
	Who     string
	CSRF    string
	Pending []approvals.Request
	History []approvals.Request
	// Choices are each pending request's durations to approve for.
	Choices map[string][]time.Duration
}

func (s *Server) view(ss *session) view {
	v := view{Who: who(ss.by), CSRF: ss.csrf, Choices: map[string][]time.Duration{}}
	for _, r := range s.svc.List() { // newest first
		if r.State == "pending" {
			v.Pending = append(v.Pending, r)
			v.Choices[r.ID] = choices(r.MaxTTL)
		} else if len(v.History) < historyLen {
			v.History = append(v.History, r)
		}
	}
	return v
}

// choices are the durations offered for a request whose entry allows at
// most max (0: no limit but the task's end); max itself when it is not
// one of them.
func choices(max time.Duration) []time.Duration {
	var out []time.Duration
	for _, d := range durations {
		if max == 0 || d <= max {
			out = append(out, d)
		}
	}
	if max > 0 && (len(out) == 0 || out[len(out)-1] != max) {
		out = append(out, max)
	}
	return out
}

func (s *Server) page(w http.ResponseWriter, _ *http.Request, ss *session) {
	render(w, http.StatusOK, "page", s.view(ss))
}

// fragment is the requests part of the page, which the script swaps in
// when something changed.
func (s *Server) fragment(w http.ResponseWriter, _ *http.Request, ss *session) {
	render(w, http.StatusOK, "requests", s.view(ss))
}

func (s *Server) message(w http.ResponseWriter, status int, msg string) {
	render(w, status, "message", message{Text: msg, Back: "/"})
}

// sessionMessage is a message on a session's page, leading back to it.
func (s *Server) sessionMessage(w http.ResponseWriter, ss *session, status int, msg string) {
	render(w, status, "message", message{Text: msg, Back: ss.path("")})
}

type message struct{ Text, Back string }

func render(w http.ResponseWriter, status int, name string, data any) {
	var b bytes.Buffer
	if err := pageTmpl.ExecuteTemplate(&b, name, data); err != nil {
		http.Error(w, "rendering the page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}

func age(t time.Time) string {
	return shortDuration(time.Since(t).Round(time.Second))
}

// shortDuration writes 2m for 2m0s, 1h for 1h0m0s.
func shortDuration(d time.Duration) string {
	switch {
	case d >= time.Hour && d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d >= time.Minute && d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

// answerBy names who answered.
func answerBy(a *approvals.Answer) string {
	switch {
	case a.By != "":
		return a.By
	case a.Identity != "":
		return a.Identity
	case a.UID != nil:
		return fmt.Sprintf("uid %d", *a.UID)
	}
	return "bridled"
}
