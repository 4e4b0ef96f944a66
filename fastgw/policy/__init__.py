"""fastgw.policy"""
