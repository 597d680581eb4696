def rewrite_moe_in_dynamo_graph(gm): return 0
