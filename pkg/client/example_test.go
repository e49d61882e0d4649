package client_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ztrade/pyrunner/pkg/client"
)

// The examples run against a real stack that TestMain starts (a
// redis-server, bin/pyrunner-api and a bin/pyrunner-worker on demo
// K-lines) and names in PYRUNNER_URL.

// Research runs a snippet and waits for its result, as ztrade-mcp does.
func Example_research() {
	c := client.New(os.Getenv("PYRUNNER_URL"), client.WithToken(os.Getenv("PYRUNNER_TOKEN")))
	res, err := c.Research(context.Background(), client.ResearchRequest{
		Market: client.Market{Exchange: "binance", Symbol: "BTCUSDT", BinSize: "1h", Start: 1735689600, End: 1735776000},
		Code:   "print('candles:', len(df))\nresult = {'rows': len(df), 'first': int(df.start.iloc[0])}",
	})
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Print(res.Stdout)
	fmt.Println(res.Succeeded(), string(res.Result))
	// Output:
	// candles: 24
	// true {"rows":24,"first":1735689600}
}

// Submit queues a run and returns at once; ResearchRun long-polls it.
func ExampleClient_Submit() {
	ctx := context.Background()
	c := client.New(os.Getenv("PYRUNNER_URL"))
	id, err := c.Submit(ctx, client.ResearchRequest{Market: client.Market{Exchange: "binance", Symbol: "ETHUSDT", Start: 1735689600, End: 1735693200},
		Code: "result = {'rows': len(df), 'moved': bool(df.close.pct_change().std() > 0)}"})
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	res, err := c.ResearchRun(ctx, id, 30*time.Second)
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Println(res.Status, string(res.Result))
	// Output: succeeded {"rows":61,"moved":true}
}

// Start starts a script; Follow streams its output until it ends.
func ExampleClient_Follow() {
	ctx := context.Background()
	c := client.New(os.Getenv("PYRUNNER_URL"))
	r, err := c.Start(ctx, client.ScriptRequest{Script: "greet.py", Args: []string{"world"}})
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	end, err := c.Follow(ctx, r.RunID, "stdout", func(stream, text string) { fmt.Print(text) })
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Println(end.Status, *end.ReturnCode)
	// Output:
	// hello world
	// bye
	// succeeded 0
}

// Errors carry the API's status and detail.
func ExampleStatusOf() {
	c := client.New(os.Getenv("PYRUNNER_URL"))
	_, err := c.Start(context.Background(), client.ScriptRequest{Script: "../outside.py"})
	fmt.Println(client.StatusOf(err), strings.Contains(err.Error(), "outside the scripts root"))
	// Output: 400 true
}
